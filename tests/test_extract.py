"""`netvlad-port extract` / serial_all_feats: formats, order, resume, bad input, decoding."""

import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import netvlad_port
from netvlad_port.cli import main
from netvlad_port.extract import compute_representation, crop_to_dim, serial_all_feats
from netvlad_port.images import read_image, resized_hw
from netvlad_port.matconvnet import write_net

SIZES = [(40, 56), (56, 40), (48, 64)]


def make_images(folder, n=200, seed=0):
    """n JPEGs of mixed sizes, every 13th grey, every 5th progressive, in two folders."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        h, w = SIZES[i % 3]
        yy, xx = np.mgrid[:h, :w]
        base = np.stack([(xx * (3 + i % 7) + yy * 2) % 256, (yy * 5 + i) % 256, (xx + yy * (i % 5)) % 256], -1)
        arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr[:, :, 0]) if i % 13 == 0 else Image.fromarray(arr)
        name = f"{'db' if i % 2 else 'q'}/{i:04d}.jpg"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        im.save(folder / name, quality=90, progressive=i % 5 == 0)
        names.append(name)
    return sorted(names)


@pytest.fixture(scope="module")
def data(
    tmp_path_factory,
):
    from netvlad_port.fixtures import make_net

    tmp = tmp_path_factory.mktemp("extract")
    names = make_images(tmp / "images")
    (tmp / "images" / "notes.txt").write_text("not an image")
    net = tmp / "net.mat"
    write_net(make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=8, pca_dim=32, seed=2), net)
    return tmp, names, netvlad_port.load(net), net


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def read_hloc(path):
    """How hloc reads global descriptors (pairs_from_retrieval / list_h5_names)."""
    out = {}
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(o.parent.name.strip("/")) if isinstance(o, h5py.Dataset) else None)
        for n in sorted(set(names)):
            out[n] = (f[n]["global_descriptor"].__array__(), tuple(f[n]["image_size"].__array__()))
    return out


def test_three_formats_from_one_command_each(data):
    tmp, names, model, net = data
    for suffix in ("h5", "bin", "npy"):
        res = run(
            "extract",
            "--model",
            net,
            "--images",
            tmp / "images",
            "--out",
            tmp / f"all.{suffix}",
            "--batch-size",
            "8",
            "--quiet",
        )
        assert res.exit_code == 0 and "200 images" in res.output
    h5 = read_hloc(tmp / "all.h5")
    assert sorted(h5) == names
    listed = (tmp / "all.bin.names.txt").read_text().split()
    assert listed == names == (tmp / "all.npy.names.txt").read_text().split()
    binary = np.fromfile(tmp / "all.bin", dtype=np.float32).reshape(len(names), -1)  # D x N column-major
    npy = np.load(tmp / "all.npy")
    assert binary.shape == npy.shape == (200, 32)
    assert np.array_equal(binary, npy)
    assert np.array_equal(np.stack([h5[n][0] for n in names]), npy)
    with torch.no_grad():
        for i in (0, 13, 77, 199):  # grey, colour, every size
            x = read_image(tmp / "images" / names[i])
            assert h5[names[i]][1] == (x.shape[2], x.shape[1])
            assert np.abs(model(x[None])[0].numpy() - npy[i]).max() <= 1e-6


def test_list_file_keeps_input_order_and_dim_crop(data):
    tmp, names, model, _ = data
    order = names[::-1][:20]
    (tmp / "list.txt").write_text("\n".join(order) + "\n")
    serial_all_feats(
        model, tmp / "list.txt", tmp / "list.npy", root=tmp / "images", dim=16, progress=False, num_workers=0
    )
    assert (tmp / "list.npy.names.txt").read_text().split() == order
    got = np.load(tmp / "list.npy")
    full = np.load(tmp / "all.npy") if (tmp / "all.npy").exists() else None
    ref = torch.stack([compute_representation(model, tmp / "images" / n) for n in order])
    expected = ref[:, :16] / (ref[:, :16].norm(dim=1, keepdim=True) + 1e-12)
    assert np.abs(got - expected.numpy()).max() <= 1e-6 and got.shape == (20, 16)
    if full is not None:
        assert (
            np.abs(got[0] - crop_to_dim(torch.from_numpy(full[names.index(order[0])][None]), 16)[0].numpy()).max()
            < 1e-6
        )


def test_resume_after_interrupt(data, monkeypatch):
    tmp, names, model, _ = data
    out = tmp / "resume.h5"
    calls = {"n": 0}
    forward = type(model).forward

    def flaky(self, x):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return forward(self, x)

    monkeypatch.setattr(type(model), "forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        serial_all_feats(model, tmp / "images", out, batch_size=10, progress=False, num_workers=0)
    partial = read_hloc(out)
    assert len(partial) == 30  # three batches landed, the file is valid
    monkeypatch.setattr(type(model), "forward", forward)
    report = serial_all_feats(model, tmp / "images", out, batch_size=10, progress=False, num_workers=0)
    assert report.already_present == 30 and report.extracted == 170
    full = read_hloc(out)
    assert sorted(full) == names
    fresh = tmp / "fresh.h5"  # an uninterrupted run with the same batches: bit-identical
    serial_all_feats(model, tmp / "images", fresh, batch_size=10, progress=False, num_workers=0)
    again = read_hloc(fresh)
    assert all(np.array_equal(full[n][0], again[n][0]) for n in names)


def test_ctrl_c_on_a_real_process_leaves_a_valid_file(data):
    tmp, names, _, net = data
    out = tmp / "sigint.h5"
    cmd = [
        sys.executable,
        "-m",
        "netvlad_port.cli",
        "extract",
        "--model",
        str(net),
        "--images",
        str(tmp / "images"),
        "--out",
        str(out),
        "--batch-size",
        "1",
        "--workers",
        "0",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(read_hloc(out)) >= 5:
                break
        except (OSError, KeyError):
            pass
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    n_done = len(read_hloc(out))
    assert 0 < n_done <= 200
    res = run("extract", "--model", net, "--images", tmp / "images", "--out", out, "--quiet")
    assert res.exit_code == 0 and (n_done == 200 or f"{n_done} already present" in res.output)
    assert sorted(read_hloc(out)) == names


@pytest.fixture()
def bad_folder(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(arr).save(folder / "good.jpg")
    data = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "text.jpg").write_text("this is not a JPEG")
    Image.fromarray(arr[:, :, 0].astype(np.uint16) * 257).save(folder / "sixteen.png")
    Image.fromarray(arr).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(arr).convert("P").save(folder / "palette.png")
    return folder


def test_bad_images_stop_with_a_message(bad_folder, data):
    _, _, _, net = data
    res = run("extract", "--model", net, "--images", bad_folder, "--out", bad_folder / "o.npy", "--quiet")
    assert res.exit_code == 1 and res.output.startswith("Error: ") and "bad/" in res.output
    assert not (bad_folder / "o.npy").exists()


def test_bad_images_skipped_and_listed(bad_folder, data):
    _, _, _, net = data
    res = run(
        "extract",
        "--model",
        net,
        "--images",
        bad_folder,
        "--out",
        bad_folder / "o.npy",
        "--on-error",
        "skip",
        "--quiet",
    )
    assert res.exit_code == 0 and "4 skipped" in res.output
    assert (bad_folder / "o.npy.names.txt").read_text().split() == ["good.jpg", "palette.png"]
    report = dict(line.split("\t") for line in (bad_folder / "o.npy.skipped.txt").read_text().splitlines())
    assert set(report) == {"cmyk.jpg", "sixteen.png", "text.jpg", "truncated.jpg"}
    assert "CMYK" in report["cmyk.jpg"] and "16-bit" in report["sixteen.png"]
    assert "not an image" in report["text.jpg"] and "cannot decode" in report["truncated.jpg"]


def test_missing_files_in_a_list(tmp_path, data):
    _, _, model, _ = data
    (tmp_path / "l.txt").write_text("nope/a.jpg\n")
    with pytest.raises(netvlad_port.NetVladPortError, match=r"nope/a\.jpg: no such file"):
        serial_all_feats(model, tmp_path / "l.txt", tmp_path / "o.h5", progress=False, num_workers=0)


def test_grey_is_replicated_and_exif_ignored(tmp_path):
    arr = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    Image.fromarray(arr).save(tmp_path / "g.png")
    x = read_image(tmp_path / "g.png")
    assert x.shape == (3, 12, 20) and torch.equal(x[0], x[2]) and torch.equal(x[0], torch.from_numpy(arr).float())
    im = Image.fromarray(np.stack([arr] * 3, -1))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": MATLAB's reader ignores it, so do we
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    assert read_image(tmp_path / "r.jpg").shape == (3, 12, 20)


def test_resize_shorter_side_rule():
    assert resized_hw(480, 640, 640) == (640, 853)  # shorter side to S, upsampling too
    assert resized_hw(1080, 1920, 640) == (640, 1138)
    assert resized_hw(640, 480, 640) == (853, 640)
    from netvlad_port.images import resize_shorter_side

    flat = torch.full((3, 30, 40), 77.0)
    assert torch.allclose(resize_shorter_side(flat, 15), torch.full((3, 15, 20), 77.0))


@pytest.mark.skipif(shutil.which("djpeg") is None, reason="djpeg (libjpeg-turbo-progs) not installed")
def test_jpeg_decoding_matches_libjpeg_islow(tmp_path):
    """Pillow against libjpeg's own djpeg with the ISLOW DCT (what vl_imreadjpeg uses)."""
    names = make_images(tmp_path, n=12, seed=5)
    worst = 0
    for n in names:
        ppm = tmp_path / "ref.pnm"
        subprocess.run(["djpeg", "-dct", "int", "-outfile", str(ppm), str(tmp_path / n)], check=True)
        ref = np.asarray(Image.open(ppm), dtype=np.float32)
        ref = np.repeat(ref[:, :, None], 3, 2) if ref.ndim == 2 else ref
        ours = read_image(tmp_path / n).permute(1, 2, 0).numpy()
        worst = max(worst, np.abs(ours - ref).max())
    assert worst == 0


def _old_fingerprint(model) -> str:
    """``feature_store.model_fingerprint`` as it computed the tag before the model carried it."""
    import hashlib

    h = hashlib.sha256()
    for layer in model.layers:
        h.update(f"{layer.name}:{layer.matlab_type};".encode())
        for w in layer.matlab_weights():
            h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def test_the_fingerprint_is_the_one_existing_tags_hold(data):
    from pathlib import Path

    from netvlad_port.feature_store import model_fingerprint

    model = data[2]
    assert model.fingerprint == _old_fingerprint(model) == model_fingerprint(model)
    tiny = netvlad_port.load(Path(__file__).parent / "data" / "parity" / "tiny_vlad" / "net.mat")
    tagged = "7f54d48296eb5fe7a7ae6ca580fc51f61581d969d6c883aa9d1c904434c4e156"  # by the previous version
    assert tiny.fingerprint == tagged
    with torch.no_grad():
        tiny.layers[0].weight_params()[0][0, 0, 0, 0] += 1
    assert tiny.fingerprint == _old_fingerprint(tiny) != tagged


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU here"))])  # fmt: skip
@pytest.mark.parametrize("method", ["vlad_preL2_intra", "vladv2_preL2_intra", "max_preL2", "preL2_gem"])
def test_fp16_and_bf16_descriptors_agree_with_fp32(method, device):
    """The demo network's structure (VGG16 at 1/8 width, K = 16, WPCA) at 120 x 160: its conv5 sums of squares
    (~1e7) overflow fp16, so norms, squared sums and VLAD sums run in fp32 under autocast."""
    from netvlad_port.fixtures import make_net
    from netvlad_port.model import SimpleNN
    from netvlad_port.precision import precision_mode

    pca = 64 if method.startswith("vlad_") else None
    model = SimpleNN(make_net("vd16", method, width=1 / 8, k=16, pca_dim=pca, seed=0)).eval().to(device)
    x = (torch.rand(3, 3, 120, 160, generator=torch.Generator().manual_seed(0)) * 255).to(device)
    with torch.no_grad():
        ref = model(x)
        for precision in ("bf16", "fp16"):
            with precision_mode(precision, torch.device(device)):
                got = model(x).float()
            cos = torch.nn.functional.cosine_similarity(ref, got).min().item()
            assert cos >= 0.99, (precision, cos)
