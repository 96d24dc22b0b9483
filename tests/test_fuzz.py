"""A seeded fuzz campaign over bad inputs: mutated network .mat files (byte-level and structural),
bad images, dataset specs, converted folders and parity dumps. Every case runs through the CLI in
a child process (a crash there cannot take the test run with it); none may end in a traceback,
a hang or a partial output, and every error names the file."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from netvlad_port.datasets import write_db_struct
from netvlad_port.fixtures import make_net
from netvlad_port.matconvnet import write_net

from helpers import line, spec_fields, suite

CHILD = r"""
import json, sys, traceback
from click.testing import CliRunner
from netvlad_port.cli import main
out = []
for case in json.load(open(sys.argv[1])):
    r = CliRunner().invoke(main, case["args"])
    tb = None if r.exception is None or isinstance(r.exception, SystemExit) else "".join(
        traceback.format_exception(r.exception))[-600:]
    out.append({"file": case["file"], "code": r.exit_code, "output": r.output[:400] + r.output[-400:], "traceback": tb})
print(json.dumps(out))
"""


def mutate_bytes(data: bytes, rng, n_flips: int) -> bytes:
    b = bytearray(data)
    for _ in range(n_flips):
        pos = int(rng.integers(128, len(b))) if rng.random() < 0.5 else int(rng.integers(128, min(len(b), 4096)))
        b[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def structural_nets(base: Path, folder: Path, rng, n: int) -> list[Path]:
    """Layer fields replaced with wrong types, ranges and shapes."""
    bad_values = [np.array(["x"]), np.array([[np.nan]]), np.array([[np.inf]]), np.array([[0.0]]), np.array([[-3.0]]),
                  np.array([[1.5]]), np.zeros((0, 0)), np.array([[1e5]]), np.array([[2.0, 2.0, 2.0]]),
                  np.array([[1.0 + 2j]])]  # fmt: skip
    fields = ["stride", "pad", "pool", "leak", "param", "dilate", "method", "type", "name", "weights"]
    paths = []
    for i in range(n):
        net = scipy.io.loadmat(base)["net"]
        layers = net[0, 0]["layers"]
        layer = layers[0, int(rng.integers(0, layers.shape[1]))][0, 0]
        names = [f for f in fields if f in layer.dtype.names]
        field = names[int(rng.integers(0, len(names)))]
        value = bad_values[int(rng.integers(0, len(bad_values)))]
        if field == "weights" and layer["weights"].size:
            w = layer["weights"].copy()
            w[0, 0] = w[0, 0] * value.ravel()[0] if value.dtype.kind in "fc" and value.size else np.zeros((2, 3))
            value = w
        layer[field] = value
        if rng.random() < 0.2:  # averageImage of a wrong shape or type
            net[0, 0]["meta"][0, 0]["normalization"][0, 0]["averageImage"] = bad_values[int(rng.integers(0, 10))]
        path = folder / f"struct_{i}.mat"
        scipy.io.savemat(path, {"net": net})
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, tiny_world):
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(2026)
    spec = make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=8, seed=1)
    write_net(spec, root / "base.mat")
    write_net(spec, root / "base_z.mat", compress=True)
    cases = []
    # 200+ network files: bit flips, truncations, structural edits; read by `info`
    nets = []
    for i in range(120):
        data = (root / ("base.mat" if i % 2 else "base_z.mat")).read_bytes()
        nets.append(root / f"flip_{i}.mat")
        nets[-1].write_bytes(mutate_bytes(data, rng, 1 + i % 3))
    for i in range(20):
        data = (root / "base.mat").read_bytes()
        nets.append(root / f"cut_{i}.mat")
        nets[-1].write_bytes(data[: int(rng.integers(0, len(data)))])
    nets += structural_nets(root / "base.mat", root, rng, 70)
    cases += [{"file": str(p), "args": ["info", str(p)]} for p in nets]
    # 50 bad images, extracted one by one into their own outputs
    images = root / "images"
    images.mkdir()
    ok = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(ok).save(images / "ok.jpg")
    jpeg = (images / "ok.jpg").read_bytes()
    for i in range(50):
        p = images / f"bad_{i}.jpg"
        kind = i % 5
        if kind == 0:
            p.write_bytes(mutate_bytes(jpeg, rng, 8))
        elif kind == 1:
            p.write_bytes(jpeg[: int(rng.integers(0, len(jpeg)))])
        elif kind == 2:
            p.write_bytes(rng.integers(0, 255, 300, dtype=np.uint8).tobytes())
        elif kind == 3:
            Image.fromarray(ok[: 1 + i % 7, : 1 + i % 5]).save(p.with_suffix(".png"))
            p = p.with_suffix(".png")
        else:
            Image.fromarray(ok[..., 0].astype(np.uint16) * 250).save(p.with_suffix(".png"))
            p = p.with_suffix(".png")
        out = root / "out" / f"img_{i}.npy"
        cases.append({"file": str(p), "out": str(out), "args": ["extract", "--model", str(root / "base.mat"),
                      "--images", str(p), "--out", str(out), "--quiet"]})  # fmt: skip
    # 30 dataset specs
    base_fields = spec_fields(line(0, 10, 40), line(5))
    bad_specs = {"posDistThr": ["x", np.nan, -1, np.zeros(0)], "utmDb": [np.full((2, 3), np.nan), np.ones((3, 3)),
                 np.ones((2, 2))], "dbImageFns": [["../../x.jpg", "a", "b"], ["/etc/passwd", "a", "b"]],
                 "nonTrivPosDistSqThr": [np.inf, "y"], "utmQ": [np.ones((2, 1)) * 1j]}  # fmt: skip
    keys = list(bad_specs)
    for i in range(30):
        fields = dict(base_fields)
        k = keys[i % len(keys)]
        fields[k] = bad_specs[k][i % len(bad_specs[k])]
        p = root / f"spec_{i}.mat"
        try:
            write_db_struct(p, fields)
        except Exception:
            scipy.io.savemat(p, {"dbStruct": {k: v for k, v in fields.items() if not isinstance(v, list)}})
        cases.append({"file": str(p), "args": ["test", "--model", str(tiny_world.net), "--dataset", str(p),
                      "--root", str(root), "--out", str(root / "out" / f"spec_{i}"), "--quiet"]})  # fmt: skip
    # 20 tampered converted folders
    from netvlad_port.converted import save_converted

    for i in range(20):
        folder = root / f"conv_{i}"
        save_converted(spec, folder)
        cfg_path = folder / "config.json"
        cfg = json.loads(cfg_path.read_text())
        kind = i % 5
        if kind == 0:
            del cfg["layers"][int(rng.integers(0, len(cfg["layers"])))]["params"]
        elif kind == 1:
            cfg["layers"][0]["weights"] = "big"
        elif kind == 2:
            cfg_path.write_bytes(b"\xff\xfe" + cfg_path.read_bytes())
        elif kind == 3:
            cfg_path.write_text("[" * 100000 + "]" * 100000)
        else:
            (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:100])
        if kind in (0, 1):
            cfg_path.write_text(json.dumps(cfg))
        cases.append({"file": str(folder), "args": ["info", str(folder)]})
    # 20 tampered dumps of the tiny_vlad suite
    s = suite("tiny_vlad")
    ref = scipy.io.loadmat(s.dir / "ref.mat")
    for i in range(20):
        d = {k: v for k, v in ref.items() if not k.startswith("__")}
        kind = i % 4
        if kind == 0:
            del d[sorted(k for k in d if k not in ("acts", "desc_test"))[i % 8]]
        elif kind == 1:
            d["desc_test"] = np.ones((3, 3))
        elif kind == 2:
            d["acts"] = d["acts"][:, :3]
        else:
            d["sare_variant"] = np.array(["trainNothing"])
        p = root / f"dump_{i}.mat"
        scipy.io.savemat(p, d)
        cases.append(
            {"file": str(p), "args": ["parity", str(s.net_path), str(p), "--images", str(s.dir / "images.mat")]}
        )
    spec_file = root / "cases.json"
    spec_file.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(spec_file)], capture_output=True, text=True, timeout=240,
                          cwd=Path(__file__).parent)  # fmt: skip
    assert proc.returncode == 0, f"the child process died ({proc.returncode}): {proc.stderr[-2000:]}"
    return cases, json.loads(proc.stdout)


def test_campaign_has_its_size(campaign):
    cases, _ = campaign
    kinds = {k: sum(c["args"][0] == k for c in cases) for k in ("info", "extract", "test", "parity")}
    assert kinds["info"] >= 210 and kinds["extract"] >= 50 and kinds["test"] >= 30 and kinds["parity"] >= 20


def test_no_traceback_and_every_error_names_the_file(campaign):
    _, results = campaign
    tracebacks = [(r["file"], r["traceback"]) for r in results if r["traceback"]]
    assert not tracebacks
    unnamed = [(r["file"], r["output"]) for r in results
               if r["code"] != 0 and Path(r["file"]).name not in r["output"]]  # fmt: skip
    assert not unnamed, "\n".join(f"{f}: {o[-300:]}" for f, o in unnamed[:8])


def test_no_partial_outputs(campaign):
    cases, results = campaign
    for case, r in zip(cases, results):
        if "out" in case and r["code"] != 0:
            out = Path(case["out"])
            assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), case["file"]


# --- the residue of the campaign (issue 22): each family ends in one line naming the file and field ------------
def _edit_net(base: Path, out: Path, layer: str, field: str, value) -> Path:
    net = scipy.io.loadmat(base)["net"]
    layers = net[0, 0]["layers"]
    for i in range(layers.shape[1]):
        if layers[0, i][0, 0]["name"][0] == layer:
            layers[0, i][0, 0][field] = value
    if layer == "meta":
        net[0, 0]["meta"][0, 0]["normalization"][0, 0][field] = value
    scipy.io.savemat(out, {"net": net})
    return out


def _edit_spec(root: Path, out: Path, field: str, value) -> Path:
    fields = spec_fields(line(0, 10, 40), line(5))
    names = {k: np.array([[n] for n in fields[k]], dtype=object) for k in ("dbImageFns", "qImageFns")}
    s = {k: (names[k] if k in names else np.atleast_2d(v)) for k, v in fields.items()}
    s[field] = value
    scipy.io.savemat(out, {"dbStruct": s})
    return out


RESIDUE = {  # name: (command, what is edited, the words the one line must hold)
    "stride 1e9": ("info", ("net", "conv1_1", "stride", 1e9), "layer 4 ('pool1'): window 2 does not fit"),
    "stride 2**63": ("extract", ("net", "conv5_3", "stride", 2.0**63), "stride: 9223372036854775808 is beyond"),
    "pool 1e9": ("convert", ("net", "pool1", "pool", 1e9), "window 1000000000 does not fit"),
    "pool 2**63": ("info", ("net", "pool4", "pool", 2.0**63), "pool: 9223372036854775808 is beyond"),
    "dilate 1e6": ("extract", ("net", "conv5_3", "dilate", 1e6), "('conv5_3'): window 2000001 does not fit"),
    "pad 2**31": ("info", ("net", "conv1_1", "pad", 2.0**31), "('conv1_1') pad: 2147483648 is beyond"),
    "pad 1e5 info": ("info", ("net", "conv1_1", "pad", 1e5), "('conv1_1') (pad [100000, 100000, 100000, 100000]"),
    "pad 1e5 convert": ("convert", ("net", "conv5_3", "pad", 1e5), "even the smallest image"),
    "pad deleted": ("info", ("folder", 0, "pad", None), "layers[0].params: no pad"),
    "averageImage text info": ("info", ("net", "meta", "averageImage", "abc"), "meta.normalization.averageImage"),
    "averageImage text convert": ("convert", ("net", "meta", "averageImage", "abc"), "normalization.averageImage"),
    "numImages text": ("test", ("spec", "numImages", "x"), "numImages must be one whole number"),
    "numImages NaN": ("test", ("spec", "numImages", np.nan), "numImages must be one whole number"),
    "name of 300 characters": ("test", ("spec", "dbImageFns", np.array([["a" * 300 + ".jpg"]] * 10, dtype=object)),
                               "dbImageFns: image name"),
    "names as numbers": ("test", ("spec", "qImageFns", np.arange(5.0)[:, None]), "qImageFns"),
    "complex posDistThr": ("test", ("spec", "posDistThr", np.array([[25 + 1j]])), "posDistThr must be a real"),
    "logical utm": ("test", ("spec", "utmDb", np.ones((2, 10), bool)), "utmDb holds logical values"),
    "CR in a listed name": ("extract", ("list", "ok.jpg\nb\rad.jpg\n"), "line 2: 'b\\rad.jpg' holds a line break"),
}  # fmt: skip


def _residue_case(name, root, base, tiny_world):
    command, (kind, *edit), words = RESIDUE[name]
    slug = name.replace(" ", "_").replace("*", "")
    if kind == "net":
        target = _edit_net(base, root / f"{slug}.mat", edit[0], edit[1], np.array([[edit[2]]]) if
                           isinstance(edit[2], float) else np.array([edit[2]]))  # fmt: skip
    elif kind == "folder":
        from netvlad_port.converted import save_converted
        from netvlad_port.loading import load_spec

        target = root / slug
        save_converted(load_spec(base), target)
        cfg = json.loads((target / "config.json").read_text())
        del cfg["layers"][edit[0]]["params"][edit[1]]
        (target / "config.json").write_text(json.dumps(cfg))
    elif kind == "spec":
        target = _edit_spec(root, root / f"{slug}.mat", *edit)
    else:
        target = root / f"{slug}.txt"
        target.write_bytes(edit[0].encode())
    out = root / "out" / slug
    args = {"info": ["info", target], "convert": ["convert", target, "-o", out],
            "extract": ["extract", base if kind == "list" else target, "--images", root / "images" if kind != "list"
                        else target, "-o", out.with_suffix(".h5"), "--quiet"],
            "test": ["test", "--model", tiny_world.net, "--dataset", target, "--root", root, "-o", out,
                     "--quiet"]}[command]  # fmt: skip
    return target, out, words, [str(a) for a in args]


@pytest.fixture(scope="module")
def residue_root(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("residue")
    write_net(make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=8, seed=1), root / "base.mat")
    (root / "images").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "ok.jpg")
    Image.open(root / "ok.jpg").save(root / "images" / "ok.jpg")
    return root


@pytest.mark.parametrize("name", list(RESIDUE))
def test_residue_families_end_in_one_line_naming_the_file_and_field(name, residue_root, tiny_world):
    import traceback

    from click.testing import CliRunner

    from netvlad_port.cli import main

    target, out, words, args = _residue_case(name, residue_root, residue_root / "base.mat", tiny_world)
    r = CliRunner().invoke(main, args)
    tb = None if r.exception is None or isinstance(r.exception, SystemExit) else traceback.format_exception(r.exception)
    assert tb is None, "".join(tb)[-1500:]
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert target.name in lines[0] and words in lines[0], lines[0]
    assert not out.exists() and not out.with_suffix(".h5").exists()


# --- .pth checkpoints (issue 25): bit flips, truncation, code-running pickles, wrong shapes and dtypes ---------
def _pth_cases(root: Path, rng) -> list[dict]:
    """A Nanne-layout checkpoint (AlexNet encoder + NetVLAD, K 4), mutated 60 ways, each through ``convert``."""
    import pickle

    import torch

    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    state = {f"encoder.{k}": v for k, v in torchvision.models.alexnet().features[:-2].state_dict().items()}
    state |= {"pool.centroids": torch.rand(4, 256), "pool.conv.weight": torch.randn(4, 256, 1, 1)}
    good = root / "good.pth.tar"
    torch.save({"epoch": 1, "state_dict": state, "best_score": np.float64(0.5)}, good)
    data = good.read_bytes()
    marker = root / "EXECUTED"
    files = []
    for i in range(20):  # bit flips across the zip (headers, pickle, tensor bytes)
        files.append((f"flip_{i}.pth", mutate_bytes(data, rng, 1 + i % 4)))
    for i, frac in enumerate((0.0, 0.01, 0.1, 0.5, 0.9, 0.999)):  # truncation
        files.append((f"cut_{i}.pth", data[: int(len(data) * frac)]))
    payloads = [(__import__("os").system, (f"touch {marker}",)), (eval, ("1",)), (exec, ("x=1",)),
                (__import__("subprocess").call, (["touch", str(marker)],))]  # fmt: skip
    for i, (fn, args) in enumerate(payloads):  # pickles that would run code, bare and inside a torch.save zip
        evil = type("Evil", (), {"__reduce__": lambda self, fn=fn, args=args: (fn, args)})()
        files.append((f"evil_{i}.pkl", pickle.dumps({"state_dict": evil}, protocol=2)))
        buf = root / f"evil_{i}.pth"
        torch.save({"epoch": evil}, buf)
        files.append((buf.name, buf.read_bytes()))
    bad_values = [torch.zeros(3), torch.zeros(4, 256, dtype=torch.int32), torch.zeros(4, 256, dtype=torch.bool),
                  torch.zeros(4, 256, dtype=torch.complex64), torch.full((4, 256), float("nan")), torch.zeros(0),
                  torch.zeros(4, 256, 1, 1, 1), "a string", None, 3.5]  # fmt: skip
    keys = ["pool.centroids", "pool.conv.weight", "encoder.0.weight", "encoder.10.bias"]
    for i in range(22):  # wrong shapes, dtypes and types in the state_dict, keys removed or added
        s = dict(state)
        key = keys[i % len(keys)]
        if i % 11 == 10:
            del s[key]
        elif i % 11 == 9:
            s[f"{key}.extra"] = torch.zeros(1)
        else:
            s[key] = bad_values[i % len(bad_values)]
        p = root / f"shape_{i}.pth"
        torch.save({"state_dict": s}, p)
        files.append((p.name, p.read_bytes()))
    cases = []
    for name, blob in files:
        p = root / name
        p.write_bytes(blob)
        out = root / f"{name}.out"
        cases.append({"file": str(p), "out": str(out), "args": ["convert", str(p), "-o", str(out)]})
    cases.append({"file": str(good), "args": ["info", str(good)]})
    return cases


@pytest.fixture(scope="module")
def pth_campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_pth")
    cases = _pth_cases(root, np.random.default_rng(25))
    spec_file = root / "cases.json"
    spec_file.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(spec_file)], capture_output=True, text=True, timeout=240,
                          cwd=Path(__file__).parent)  # fmt: skip
    assert proc.returncode == 0, f"the child process died ({proc.returncode}): {proc.stderr[-2000:]}"
    return root, cases, json.loads(proc.stdout)


def test_pth_campaign_no_traceback_no_payload_no_partial_output(pth_campaign):
    root, cases, results = pth_campaign
    assert len(cases) >= 55 and results[-1]["code"] == 0  # the unmutated checkpoint converts
    assert not [(r["file"], r["traceback"]) for r in results if r["traceback"]]
    assert not (root / "EXECUTED").exists()  # no payload ran
    refused = [r for r in results[:-1] if r["code"] != 0]
    assert len(refused) >= 50  # flips land in CRC-checked entries (refused) or in padding no reader uses
    unnamed = [(r["file"], r["output"]) for r in refused if Path(r["file"]).name not in r["output"]]
    assert not unnamed, unnamed[:5]
    lines = {line for r in refused for line in r["output"].strip().splitlines()}  # (the child keeps head + tail)
    assert all(line.startswith("Error: ") for line in lines), sorted(lines)[:3]
    evil = [r for r in results if "evil" in r["file"]]
    assert all(r["code"] != 0 and "weights-only" in r["output"] for r in evil), evil[:2]
    for case, r in zip(cases, results):
        if r["code"] != 0 and "out" in case:
            assert not Path(case["out"]).exists(), case["file"]
