"""PyTorch-born checkpoints of our own making, with the originals' key structure (Nanne's AlexNet + NetVLAD,
GCL's ResNet18 + GeM): each original's containers, DataParallel keys and the legacy format load; the
descriptor equals one computed here the originals' way (torchvision modules, torchvision transforms on the
PIL image, Nanne's per-cluster loop); bad checkpoints are one line naming the key, and a pickle that would
run code is refused without running it. The originals' own suites are tests/test_torch_refs.py."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from netvlad_port.cli import main
from netvlad_port.errors import NetFormatError
from netvlad_port.extract import compute_representation
from netvlad_port.importers import import_checkpoint
from netvlad_port.loading import load
from netvlad_port.matconvnet.spec import WHOLE_L2

torchvision = pytest.importorskip("torchvision")
from torchvision import transforms  # noqa: E402

K = 8
NORMALIZE = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def nanne_state(vladv2: bool = False) -> dict:
    torch.manual_seed(1)
    encoder = torchvision.models.alexnet().features[:-2]
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["pool.centroids"] = torch.rand(K, 256)
    state["pool.conv.weight"] = torch.randn(K, 256, 1, 1) * 8
    if vladv2:
        state["pool.conv.bias"] = torch.randn(K)
    return state


def nanne_reference(state: dict, image) -> torch.Tensor:
    """Nanne's netvlad.py forward, written here as the original does it (a loop over clusters)."""
    encoder = torchvision.models.alexnet().features[:-2]
    encoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
    x = NORMALIZE(transforms.ToTensor()(image))[None]
    with torch.no_grad():
        x = F.normalize(encoder.eval()(x), p=2, dim=1)
        a = F.softmax(F.conv2d(x, state["pool.conv.weight"], state.get("pool.conv.bias")).view(1, K, -1), dim=1)
        flat = x.view(1, 256, -1)
        vlad = torch.zeros(1, K, 256)
        for k in range(K):
            vlad[:, k] = ((flat - state["pool.centroids"][k][None, :, None]) * a[:, k : k + 1]).sum(-1)
        return F.normalize(F.normalize(vlad, p=2, dim=2).view(1, -1), p=2, dim=1)[0]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("im") / "street.png"
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path)
    return path


def save(obj, path, legacy: bool = False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("container", ["bare", "nanne", "parallel", "legacy"])
def test_nanne_checkpoints_give_the_originals_descriptor(container, image, tmp_path):
    state = nanne_state(vladv2=container == "legacy")
    saved = state
    if container == "parallel":  # main.py wraps encoder and pool in nn.DataParallel
        saved = {k.replace("encoder.", "encoder.module.").replace("pool.", "pool.module."): v for k, v in state.items()}
    if container != "bare":  # main.py's dict, numpy float64 scores included
        saved = {"epoch": 3, "state_dict": saved, "recalls": {1: np.float64(0.5)}, "best_score": np.float64(0.5),
                 "optimizer": {"state": {}}, "parallel": container == "parallel"}  # fmt: skip
    ckpt = save(saved, tmp_path / "checkpoint.pth.tar", legacy=container == "legacy")
    model = load(ckpt)
    assert model.pixel_range == 1.0 and model.resize is None  # Nanne: ToTensor + Normalize, no resize
    got = compute_representation(model, image)
    assert rel(got, nanne_reference(state, Image.open(image))) <= 1e-5
    if container != "bare":
        info = import_checkpoint(ckpt).meta["checkpoint"]
        assert info["from"] == "nanne" and info["epoch"] == 3 and info["best_score"] == 0.5


def test_gcl_checkpoint_resizes_as_gcl_and_gives_its_descriptor(image, tmp_path):
    torch.manual_seed(2)
    backbone = torch.nn.Sequential(*list(torchvision.models.resnet18().children())[:-2]).eval()
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()} | {"pool.p": torch.tensor([2.5])}
    ckpt = save({"step": 4, "model_state_dict": state, "optimizer": {}, "scheduler": {}}, tmp_path / "m.pth")
    out = tmp_path / "conv"
    r = CliRunner().invoke(main, ["convert", str(ckpt), "-o", str(out), "--image-size", "64x96"])
    assert r.exit_code == 0 and "(gcl)" in r.output, r.output
    tf = transforms.Compose([transforms.Resize((64, 96)), transforms.ToTensor(), NORMALIZE])
    with torch.no_grad():
        x = backbone(tf(Image.open(image).convert("RGB"))[None])
        p = state["pool.p"]
        ref = F.normalize(F.avg_pool2d(x.clamp(min=1e-6).pow(p), x.shape[-2:]).pow(1.0 / p).flatten(1))[0]
    assert rel(compute_representation(load(out), image), ref) <= 1e-5
    r = CliRunner().invoke(main, ["info", str(out)])
    assert "input RGB 0..1" in r.output and "resize 64x96 bilinear" in r.output and "backbone" in r.output


@pytest.mark.parametrize("arch", ["vgg16", "resnet18"])
def test_imagenet_weights_from_gcl_are_its_start_network(arch, image, tmp_path):
    """torchvision ImageNet weights given --from gcl: GCL's create_model(arch, 'GeM', pretrained=True) --
    VGG16's whole features (pool5 included) or ResNet children()[:-2], GeM p = 3, F.normalize, 480x640."""
    torch.manual_seed(3)
    net = getattr(torchvision.models, arch)().eval()
    ckpt = save(net.state_dict(), tmp_path / f"{arch}.pth")
    out = tmp_path / "start"
    r = CliRunner().invoke(main, ["convert", str(ckpt), "--from", "gcl", "-o", str(out), "--image-size", "48x64"])
    assert r.exit_code == 0, r.output
    trunk = net.features if arch == "vgg16" else torch.nn.Sequential(*list(net.children())[:-2])
    tf = transforms.Compose([transforms.Resize((48, 64)), transforms.ToTensor(), NORMALIZE])
    with torch.no_grad():
        x = trunk(tf(Image.open(image).convert("RGB"))[None])
        ref = F.normalize(F.avg_pool2d(x.clamp(min=1e-6).pow(3.0), x.shape[-2:]).pow(1.0 / 3).flatten(1))[0]
    model = load(out)
    assert [layer.type for layer in model.to_spec().layers] == ["backbone", "gem", WHOLE_L2]
    assert rel(compute_representation(model, image), ref) <= 1e-5
    default = import_checkpoint(ckpt, "gcl")  # no --image-size: GCL's Resize((480, 640))
    assert default.meta["resize"] == {"mode": "fixed", "size": [480, 640], "filter": "bilinear"}


def test_imagenet_weights_of_another_family_are_not_a_gcl_start(tmp_path):
    ckpt = save(torchvision.models.alexnet().state_dict(), tmp_path / "alexnet.pth")
    assert "alexnet is not one of GCL's backbones" in cli_error(["convert", str(ckpt), "--from", "gcl", "-o",
                                                                   str(tmp_path / "o")])  # fmt: skip


def cli_error(args) -> str:
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    return r.output


@pytest.mark.parametrize(
    "change,named",
    [
        (lambda s: s.pop("encoder.3.weight"), "missing 3.weight"),
        (lambda s: s.__setitem__("pool.extra", torch.zeros(1)), "unexpected extra"),
        (lambda s: s.__setitem__("encoder.0.weight", torch.zeros(64, 3, 5, 5)), "0.weight (64, 3, 5, 5)"),
        (lambda s: s.__setitem__("pool.centroids", torch.zeros(K, 100)), "expected 8 x 100"),
        (lambda s: s.__setitem__("pool.centroids", torch.zeros(K, 256, dtype=torch.int64)), "int64"),
        (lambda s: s.__setitem__("encoder.0.bias", torch.zeros(64, dtype=torch.complex64)), "complex64"),
    ],
)
def test_a_bad_checkpoint_is_one_line_naming_the_key(change, named, tmp_path):
    state = nanne_state()
    change(state)
    ckpt = save({"state_dict": state, "epoch": 1}, tmp_path / "bad.pth.tar")
    out = cli_error(["convert", str(ckpt), "-o", str(tmp_path / "out"), "--from", "nanne"])
    assert named in out and str(ckpt) in out
    assert not (tmp_path / "out").exists()


def test_an_unknown_checkpoint_asks_for_from_and_extra_keys_are_named(tmp_path):
    state = nanne_state() | {"head.weight": torch.zeros(2)}
    ckpt = save(state, tmp_path / "x.pth")
    assert "give --from" in cli_error(["convert", str(ckpt), "-o", str(tmp_path / "o")])
    assert "unexpected key head.weight" in cli_error(
        ["convert", str(ckpt), "-o", str(tmp_path / "o"), "--from", "nanne"]
    )
    with pytest.raises(NetFormatError, match="no encoder"):
        import_checkpoint(save({"pool.p": torch.ones(1)}, tmp_path / "y.pth"), "nanne")


class Payload:
    """Unpickling this would create a file: the weights-only reader must refuse it first."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("fmt", ["zip", "pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_unrun(fmt, tmp_path):
    marker = tmp_path / "ran"
    obj = {"epoch": Payload(marker), "state_dict": nanne_state()}
    path = tmp_path / "evil.pth"
    if fmt == "zip":
        save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    for cmd in (["convert", str(path), "-o", str(tmp_path / "o")], ["info", str(path)]):
        out = cli_error(cmd)
        assert "system" in out and "weights-only" in out
    assert not marker.exists()


def test_a_truncated_checkpoint_is_one_line(tmp_path):
    data = save({"state_dict": nanne_state()}, tmp_path / "ok.pth").read_bytes()
    bad = tmp_path / "cut.pth"
    bad.write_bytes(data[: len(data) // 2])
    assert "not a readable PyTorch checkpoint" in cli_error(["info", str(bad)])


def test_export_mat_refuses_a_backbone_naming_it(tmp_path):
    ckpt = save({"state_dict": nanne_state()}, tmp_path / "c.pth")
    out = cli_error(["export-mat", str(ckpt), "-o", str(tmp_path / "net.mat")])
    assert "'encoder' (backbone)" in out and "MatConvNet" in out


def test_torchvision_imagenet_weights_by_name_as_a_training_start(tmp_path, monkeypatch):
    """A registered torchvision file (served locally) is fetched, its trunk imported (classifier dropped,
    VGG/AlexNet cut at the last conv), its architecture checked before its checksum is recorded."""
    from test_deploy import _Server

    import netvlad_port
    from netvlad_port.hub import RELEASES, Release, register_release

    files = tmp_path / "served"
    files.mkdir()
    torch.manual_seed(3)
    net = torchvision.models.alexnet()
    torch.save(net.state_dict(), files / "alexnet-x.pth")
    server = _Server(files)
    monkeypatch.setenv("NETVLAD_PORT_HOME", str(tmp_path / "home"))
    try:
        for name, arch in (("tv_alexnet", "alexnet"), ("tv_wrong", "resnet50")):
            register_release(Release(name, "alexnet-x.pth", server.url + "alexnet-x.pth", "x",
                                     arch={"backbone": arch}, importer={"source": "torchvision"}))  # fmt: skip
        model = netvlad_port.load("tv_alexnet")
        assert [layer.matlab_type for layer in model.layers] == ["backbone"]
        x = torch.rand(1, 3, 100, 120)
        with torch.no_grad():
            ref = net.features[:-2](NORMALIZE(x))
            assert rel(model.run(model.prepare(x)), ref) <= 1e-6
        (tmp_path / "home" / "sha256.json").unlink()
        r = CliRunner().invoke(main, ["info", "tv_wrong"])
        assert r.exit_code != 0 and "backbone alexnet (the release: resnet50)" in r.output, r.output
    finally:
        RELEASES.unregister("tv_alexnet")
        RELEASES.unregister("tv_wrong")
        server.httpd.shutdown()


def test_the_input_range_warning_follows_the_network(tmp_path):
    """A PyTorch-born network takes 0..1 without a word, and says so when given 0..255 (MATLAB's range)."""
    import warnings

    model = load(save({"state_dict": nanne_state()}, tmp_path / "c.pth"))
    x = torch.rand(1, 3, 80, 80)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)
    with pytest.warns(UserWarning, match="takes RGB in 0..1"):
        model(x * 255)
