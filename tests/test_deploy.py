"""Deployment (docs/formats.md#onnx-and-torchscript, docs/formats.md#released-models-by-name): ONNX and
TorchScript exports against ``model(x)`` for every parity-suite network, extraction with onnxruntime,
released models by name against a local HTTP server, and the torch.hub entry."""

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from netvlad_port import load
from netvlad_port.cli import main
from netvlad_port.deploy import TOLERANCE, VERIFY_SIZES, Deployable, export_model
from netvlad_port.exported import jit_load, read_metadata

from helpers import SUITES, suite

ROOT = Path(__file__).resolve().parents[1]
onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e '.[onnx]')")


def _relative(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", SUITES)
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exports_reproduce_the_network_on_two_sizes(name, fmt, tmp_path):
    net = suite(name).net_path
    out = tmp_path / f"m.{'onnx' if fmt == 'onnx' else 'pt'}"
    meta = export_model(net, out, fmt)
    assert meta == read_metadata(out) and meta["tolerance"] == TOLERANCE
    assert set(meta["max_relative_difference"]) == {f"{h}x{w}" for h, w in VERIFY_SIZES}
    model = load(net)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        run = lambda x: session.run(None, {"images": x.numpy()})[0]  # noqa: E731
    else:
        module = jit_load(out)
        run = lambda x: module(x).detach().numpy()  # noqa: E731
    for n, (h, w) in ((1, (64, 48)), (3, (81, 100))):  # other batch sizes and sizes than the export's checks
        x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(h)) * 255
        with torch.no_grad():
            ref = model(x).numpy()
        assert _relative(run(x), ref) <= TOLERANCE


@pytest.mark.parametrize("normalize", ["exact", "matconvnet-cpu"])
def test_export_includes_dim_crop_lrn_modes_and_refuses_a_wrong_graph(normalize, tmp_path, monkeypatch):
    import onnx

    net = suite("vgg_small").net_path  # has LRN
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(main, ["export-onnx", str(net), "-o", str(out), "--dim", "8", "--normalize", normalize])
    assert res.exit_code == 0, res.output
    x = torch.rand(2, 3, 70, 90) * 255
    with torch.no_grad():
        ref = Deployable(load(net, normalize=normalize), 8)(x).numpy()
    got = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    assert got.shape == (2, 8) and _relative(got, ref) <= TOLERANCE
    assert read_metadata(out)["normalize"] == normalize and read_metadata(out)["output_dim"] == 8
    assert [d.dim_param for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim] == [
        "batch", "", "height", "width"]  # fmt: skip
    res = CliRunner().invoke(main, ["export-onnx", str(net), "-o", str(out)])
    assert res.exit_code != 0 and "exists (use --force" in res.output
    import netvlad_port.deploy as deploy  # a graph that computes something else is not written

    monkeypatch.setattr(deploy, "_relative_difference", lambda got, ref: 0.5)
    bad = tmp_path / "bad.pt"
    res = CliRunner().invoke(main, ["export-torchscript", str(net), "-o", str(bad)])
    assert res.exit_code != 0 and "differs from the network by 0.5" in res.output and not bad.exists()
    assert not list(tmp_path.glob(".bad*"))


def test_extract_with_onnxruntime_writes_the_same_h5(tiny_world, tmp_path):
    from netvlad_port.feature_store import h5_names, read_h5_descriptors

    onnx_path = tmp_path / "net.onnx"
    export_model(tiny_world.net, onnx_path)
    images = tiny_world.data / "queries"
    outs = {}
    for backend, model in (("torch", tiny_world.net), ("onnxruntime", onnx_path)):
        outs[backend] = tmp_path / f"{backend}.h5"
        res = CliRunner().invoke(main, ["extract", str(model), "--images", str(images), "-o", str(outs[backend]),
                                        "--backend", backend, "--quiet"])  # fmt: skip
        assert res.exit_code == 0, res.output
    names = sorted(h5_names(outs["torch"]))
    assert names == sorted(h5_names(outs["onnxruntime"])) and len(names) == 72
    a, b = (read_h5_descriptors(outs[k], names) for k in ("torch", "onnxruntime"))
    assert _relative(b, a) <= TOLERANCE
    res = CliRunner().invoke(main, ["extract", str(tiny_world.net), "--images", str(images), "-o",
                                    str(outs["onnxruntime"]), "--quiet"])  # fmt: skip
    assert res.exit_code != 0 and "backend 'onnxruntime', not None" in res.output  # never mixed


def test_compute_representation_and_the_fingerprint_with_onnxruntime(tiny_world, tmp_path):
    """``computeRepresentation`` takes the exported model as it takes the network (no parameters to find
    a device on), and both carry one ``fingerprint``: the exported model's is its source network's."""
    from netvlad_port.exported import OnnxRuntimeModel
    from netvlad_port.extract import compute_representation
    from netvlad_port.feature_store import model_fingerprint

    export_model(tiny_world.net, tmp_path / "net.onnx")
    model, exported = load(tiny_world.net), OnnxRuntimeModel(tmp_path / "net.onnx")
    image = sorted((tiny_world.data / "queries").rglob("*.jpg"))[0]
    array = np.random.default_rng(0).uniform(0, 255, (50, 70, 3)).astype(np.float32)
    for x in (image, array):
        ref, got = compute_representation(model, x), compute_representation(exported, x)
        assert got.shape == ref.shape == (model.output_dim,) and _relative(got, ref.numpy()) <= TOLERANCE
    assert exported.fingerprint == model.fingerprint == model_fingerprint(exported) == model_fingerprint(model)


# --- released models by name, against a local server ---------------------------------------------


class _Server:
    """``http.server`` serving a folder, with HTTP Range requests, and a switch that cuts the next
    transfer after ``cut`` bytes (an interrupted download)."""

    def __init__(self, folder: Path):
        state = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = folder / self.path.lstrip("/")
                if not path.is_file():
                    return self.send_error(404)
                data = path.read_bytes()
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers["Range"] else 0
                state.ranges.append(start)
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if state.cut is not None:
                    body, state.cut = body[: state.cut], None
                self.wfile.write(body)

        self.cut, self.ranges = None, []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A fixture network served over HTTP as a registered release, and an empty NETVLAD_PORT_HOME."""
    from netvlad_port.fixtures import make_net
    from netvlad_port.hub import RELEASES, Release, register_release
    from netvlad_port.matconvnet import write_net

    files = tmp_path / "served"
    files.mkdir()
    write_net(make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=8), files / "fixture.mat",
              encoding="saveobj")  # fmt: skip
    server = _Server(files)
    monkeypatch.setenv("NETVLAD_PORT_HOME", str(tmp_path / "home"))
    register_release(Release("fixture_net", "fixture.mat", server.url + "fixture.mat", "a test network"))
    yield server, files / "fixture.mat"
    RELEASES.unregister("fixture_net")
    server.httpd.shutdown()


def test_download_convert_once_and_record_the_checksum(served, tmp_path):
    import hashlib

    import netvlad_port

    server, file = served
    model = netvlad_port.load("fixture_net")
    assert model(torch.rand(1, 3, 48, 64) * 255).shape == (1, 8) and server.ranges == [0]
    home = tmp_path / "home"
    assert (home / "models" / "fixture_net" / "model.safetensors").is_file()
    recorded = json.loads((home / "sha256.json").read_text())
    assert recorded == {"fixture.mat": hashlib.sha256(file.read_bytes()).hexdigest()}
    netvlad_port.load("fixture_net")  # the converted folder: no second transfer
    assert server.ranges == [0]


def test_an_interrupted_transfer_resumes(served, tmp_path):
    from netvlad_port.hub import load_release

    server, file = served
    server.cut = cut = file.stat().st_size // 2
    load_release("fixture_net")
    assert len(server.ranges) == 2 and server.ranges[0] == 0 and 0 < server.ranges[1] <= cut  # asked for the rest
    home = tmp_path / "home" / "downloads"
    assert (home / "fixture.mat").read_bytes() == file.read_bytes() and not (home / "fixture.mat.part").exists()


def test_checksum_mismatch_404_and_no_network_are_refused(served, tmp_path):
    from netvlad_port.hub import RELEASES, Release, register_release

    server, file = served
    home = tmp_path / "home"
    register_release(Release("fixture_net", "fixture.mat", server.url + "fixture.mat", "x", sha256="0" * 64),
                     replace=True)  # fmt: skip
    res = CliRunner().invoke(main, ["fetch", "fixture_net", "--quiet"])
    assert res.exit_code != 0 and "not the released file" in res.output
    assert not (home / "downloads" / "fixture.mat").exists()
    register_release(Release("fixture_net", "missing.mat", server.url + "missing.mat", "x"), replace=True)
    res = CliRunner().invoke(main, ["fetch", "fixture_net", "--quiet"])
    assert res.exit_code != 0 and "404" in res.output and str(home / "downloads" / "missing.mat") in res.output
    register_release(Release("fixture_net", "off.mat", "http://127.0.0.1:9/off.mat", "x"), replace=True)
    res = CliRunner().invoke(main, ["fetch", "fixture_net", "--quiet"])
    assert res.exit_code != 0 and "cannot download" in res.output and str(home / "downloads" / "off.mat") in res.output
    assert "Traceback" not in res.output
    RELEASES.unregister("fixture_net")


def test_a_download_that_does_not_parse_is_refused(served, tmp_path):
    from netvlad_port.hub import load_release

    server, file = served
    file.write_bytes(b"<html>quota exceeded</html>" * 10)  # what a file host sends instead of the file
    with pytest.raises(Exception, match="does not parse; delete .*fixture.mat and fetch it again"):
        load_release("fixture_net")
    assert not (tmp_path / "home" / "models" / "fixture_net").exists()


def test_a_hand_placed_file_of_another_network_is_not_pinned(served, tmp_path):
    """A toy network placed where a release is expected (its sha256 unknown) is refused by its architecture,
    and its checksum is not recorded."""
    from netvlad_port.hub import RELEASES, Release, register_release

    server, file = served
    arch = {"output_dim": 4096, "method": "vlad_preL2_intra", "clusters": 64}
    register_release(Release("fixture_net", "fixture.mat", server.url + "fixture.mat", "x", arch=arch), replace=True)
    res = CliRunner().invoke(main, ["fetch", "fixture_net", "--quiet"])
    assert res.exit_code == 1 and "not fixture_net: output_dim 8 (the release: 4096), clusters 4" in res.output
    assert not (tmp_path / "home" / "sha256.json").exists() and not (tmp_path / "home" / "models").exists()
    fits = {"output_dim": 8, "method": "vlad_preL2_intra", "clusters": 4}
    register_release(Release("fixture_net", "fixture.mat", server.url + "fixture.mat", "x", arch=fits), replace=True)
    assert CliRunner().invoke(main, ["fetch", "fixture_net", "--quiet"]).exit_code == 0
    assert (tmp_path / "home" / "sha256.json").is_file()
    RELEASES.unregister("fixture_net")


def test_torch_hub_load_local(monkeypatch, tmp_path):
    from netvlad_port.fixtures import make_net
    from netvlad_port.matconvnet import write_net

    monkeypatch.setenv("NETVLAD_PORT_HOME", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    spec = make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=8)
    write_net(spec, tmp_path / "downloads" / f"{model_name()}.mat", encoding="saveobj")
    import hashlib  # its checksum is the known one (a toy is not the release: unknown, it would be refused)

    digest = hashlib.sha256((tmp_path / "downloads" / f"{model_name()}.mat").read_bytes()).hexdigest()
    (tmp_path / "sha256.json").write_text(json.dumps({f"{model_name()}.mat": digest}))
    model = torch.hub.load(str(ROOT), "netvlad_pitts30k", source="local", pretrained=True)
    x = torch.rand(2, 3, 48, 64) * 255
    assert model(x).shape == (2, 8) and torch.allclose(model(x), load(tmp_path / "models" / model_name())(x))
    fresh = torch.hub.load(str(ROOT), "vgg16_offtheshelf_max", source="local", pretrained=False)
    assert fresh(torch.rand(1, 3, 32, 32) * 255).shape == (1, 512)  # the same layers, random weights


def model_name():
    return "vd16_pitts30k_conv5_3_vlad_preL2_intra_white"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_trunk_without_aggregation_exports_with_a_size_dependent_output(fmt, tmp_path):
    from netvlad_port.fixtures import make_net
    from netvlad_port.matconvnet import NetSpec, write_net

    full = make_net("vd16", "max", width=1 / 16, pca_dim=None)
    names = [layer.name for layer in full.layers]
    trunk = NetSpec(full.layers[: names.index("conv5_3") + 1], full.meta)  # no aggregation
    write_net(trunk, tmp_path / "trunk.mat")
    out = tmp_path / f"t.{fmt}"
    res = CliRunner().invoke(main, [f"export-{fmt}", str(tmp_path / "trunk.mat"), "-o", str(out)])
    assert res.exit_code == 0 and "size-dependent output" in res.output, res.output
    assert read_metadata(out)["output_dim"] is None
