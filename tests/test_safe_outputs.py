"""Nothing mixed or lost: outputs are tagged with the model and options that made them, and a
mismatch is refused (or replaced with --force); `test` keeps one folder per model."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from netvlad_port.cli import main
from netvlad_port.fixtures import make_net
from netvlad_port.matconvnet import write_net


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for name, seed in (("a", 1), ("b", 2)):
        write_net(make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=8, seed=seed), root / f"{name}.mat")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
    return root


@pytest.mark.parametrize("suffix", ["h5", "npy", "bin"])
def test_an_output_of_another_model_or_other_options_is_refused(two_models, tmp_path, suffix):
    out = tmp_path / f"d.{suffix}"
    extract = ["extract", "--images", two_models / "images", "--out", out, "--quiet", "--model"]
    assert run(*extract, two_models / "a.mat").exit_code == 0
    before = out.read_bytes()
    other = run(*extract, two_models / "b.mat")
    assert other.exit_code == 1 and "features of another model" in other.output and str(out) in other.output
    assert out.read_bytes() == before  # untouched
    options = run(*extract, two_models / "a.mat", "--dim", "4")
    assert options.exit_code == 1 and "other options (dim None, not 4)" in options.output
    again = run(*extract, two_models / "a.mat")
    assert again.exit_code == 0  # same model and options: reused (h5) or rewritten
    forced = run(*extract, two_models / "b.mat", "--force")
    assert forced.exit_code == 0, forced.output
    if suffix != "h5":
        tag = json.loads(out.with_name(out.name + ".json").read_text())
        assert tag["dim"] is None and tag["normalize"] == "exact" and len(tag["model_sha256"]) == 64


def test_an_untagged_h5_is_not_mixed_into(two_models, tmp_path):
    import h5py

    out = tmp_path / "hloc.h5"
    with h5py.File(out, "w") as f:
        f.create_group("0.jpg").create_dataset("global_descriptor", data=np.zeros(8, np.float32))
    res = run("extract", "--model", two_models / "a.mat", "--images", two_models / "images", "--out", out, "--quiet")
    assert res.exit_code == 1 and "without a netvlad-port tag" in res.output


def test_test_keeps_one_folder_per_model(tiny_world, two_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model in (tiny_world.net, two_models / "a.mat"):
        res = run("test", "--model", model, "--dataset", "synthetic-test", "--root", tiny_world.data, "--quiet")
        assert res.exit_code == 0, res.output
    folders = sorted(p.parent.name for p in (tmp_path / "results").glob("synthetic_test-*/*/results.json"))
    assert len(folders) == 2 and len({f[:12] for f in folders}) == 2  # one per model (its SHA-256 first)


def test_parity_skips_what_a_dump_does_not_hold(tmp_path):
    """A genuine dump of a run trained from conv5_1 up stores the large tensors as empty arrays."""
    import scipy.io

    from helpers import suite

    s = suite("tiny_vlad")
    ref = scipy.io.loadmat(s.dir / "ref.mat")
    empty = np.zeros((0, 0))
    ref["acts"][0, 1] = empty  # conv1's output
    for name in ("dzdw",):
        conv1 = ref[name][0, 0]
        for j in range(conv1.size):
            conv1.flat[j] = empty
    sgd = ref["sgd"][0, 0]
    sgd["weights_after"][0, 0].flat[0] = empty
    dump = tmp_path / "partial.mat"
    scipy.io.savemat(dump, {k: v for k, v in ref.items() if not k.startswith("__")})
    res = run("parity", s.net_path, dump, "--images", s.dir / "images.mat")
    assert res.exit_code == 0, res.output
    assert "forward    conv1 " in res.output and "not in dump" in res.output
    assert "not in the dump, skipped" in res.output and res.output.strip().endswith(" 0 failed")
    nothing = {k: v for k, v in ref.items() if not k.startswith("__") and k in ("acts", "desc_test")}
    nothing["acts"] = np.empty((1, ref["acts"].size), dtype=object)
    nothing["acts"].fill(empty)
    nothing["desc_test"] = empty
    scipy.io.savemat(tmp_path / "nothing.mat", nothing)
    res = run("parity", s.net_path, tmp_path / "nothing.mat", "--images", s.dir / "images.mat")
    assert res.exit_code == 1 and "nothing checkable" in res.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_is_checked_the_same_way_everywhere(tiny_world, two_models, tmp_path):
    extract = [
        "extract",
        "--model",
        two_models / "a.mat",
        "--images",
        two_models / "images",
        "--out",
        tmp_path / "x.h5",
    ]
    train = ["train", "--dataset", "synthetic", "--root", tiny_world.data, "--model", tiny_world.net, "--out", tmp_path]
    test = ["test", "--model", tiny_world.net, "--dataset", "synthetic-test", "--root", tiny_world.data]
    for command in (extract, train, test):
        gpu = run(*command, "--device", "gpu")
        assert gpu.exit_code == 1 and "--device 'gpu': expected auto, cpu, cuda or cuda:N" in gpu.output, gpu.output
        cuda = run(*command, "--device", "cuda")
        assert cuda.exit_code == 1 and "--device cuda: no CUDA device is available" in cuda.output, cuda.output
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "log.jsonl").exists()


def test_search_checks_its_inputs_and_drops_self_pairs(two_models, tmp_path):
    images = two_models / "images"
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert run("extract", "--model", two_models / "a.mat", "--images", images, "--out", a, "--quiet").exit_code == 0
    assert run("extract", "--model", two_models / "b.mat", "--images", images, "--out", b, "--quiet").exit_code == 0
    res = run("search", "--db", a, "--queries", a, "-k", "2", "--out", tmp_path / "self.txt")
    assert res.exit_code == 0, res.output
    pairs = [line.split() for line in (tmp_path / "self.txt").read_text().splitlines()]
    assert len(pairs) == 3 * 2 and all(q != d for q, d in pairs)
    other = run("search", "--db", a, "--queries", b, "--out", tmp_path / "x.txt")
    assert other.exit_code == 1 and "different models" in other.output
    dim = tmp_path / "dim.h5"
    assert run("extract", "--model", two_models / "a.mat", "--images", images, "--out", dim, "--quiet",
               "--dim", "4").exit_code == 0  # fmt: skip
    bad = run("search", "--db", a, "--queries", dim, "--out", tmp_path / "x.txt")
    assert bad.exit_code == 1 and "8-D descriptors but" in bad.output and "4-D" in bad.output
    (tmp_path / "list.txt").write_text("0.jpg\n1.jpg\n")
    res = run("search", "--db", a, "--queries", a, "--db-list", tmp_path / "list.txt", "--query-prefix", "2",
              "-k", "5", "--out", tmp_path / "listed.txt")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted((tmp_path / "listed.txt").read_text().split()) == sorted(["2.jpg", "0.jpg", "2.jpg", "1.jpg"])


def test_small_edges(tiny_world, two_models, tmp_path, small_spec):
    import warnings

    import torch

    from netvlad_port.model import SimpleNN

    model = SimpleNN(small_spec)
    with pytest.warns(UserWarning, match="0..1"):
        model(torch.rand(1, 3, 48, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.rand(1, 3, 48, 64))  # once per model
    # pca: a too large dimension is refused before any image is read
    res = run("pca", "--model", two_models / "a.mat", "--dataset", "synthetic-train", "--root", tiny_world.data,
              "--pca-dim", "9999", "--out", tmp_path / "p")  # fmt: skip
    assert res.exit_code == 1 and "pcaDim 9999 must be smaller than the descriptor dimension 8" in res.output
    # cluster on a network that already has NetVLAD
    res = run("cluster", "--model", two_models / "a.mat", "--dataset", "synthetic-train", "--root", tiny_world.data,
              "--out", tmp_path / "c")  # fmt: skip
    assert res.exit_code == 1 and "already has an aggregation layer ('vlad:core'" in res.output
    # make-synthetic does not write into a folder that holds something
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("x")
    res = run("make-synthetic", tmp_path / "data", "--db-per-split", "4", "--queries-per-split", "2")
    assert res.exit_code == 1 and "--force" in res.output
    res = run("export-mat", two_models / "a.mat", "-o", tmp_path / "x.mat", "--mat-version", "v7.3")
    assert res.exit_code == 0, res.output


def test_cluster_suggests_the_layer_for_an_imagenet_model(tiny_world, tmp_path):
    from netvlad_port.fixtures import write_imagenet_model

    write_imagenet_model(tmp_path / "imagenet.mat", "vd16", width=1 / 16)
    res = run("cluster", "--model", tmp_path / "imagenet.mat", "--dataset", "synthetic-train", "--root",
              tiny_world.data, "--out", tmp_path / "c")  # fmt: skip
    assert res.exit_code == 1 and "unsupported layer type 'dropout'" in res.output
    assert "--layer conv5_3" in res.output


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("dbImageFns", ["../outside/secret.jpg", "b.jpg", "c.jpg"], "leaves the image folder"),
        ("qImageFns", ["/etc/passwd"], "leaves the image folder"),
        ("posDistThr", float("nan"), "posDistThr must be one finite number"),
        ("posDistThr", -5.0, "posDistThr must be one finite number"),
        ("nonTrivPosDistSqThr", "ten", "nonTrivPosDistSqThr must be a number"),
        ("posDistThr", np.zeros(0), "posDistThr must be one finite number"),
        ("utmDb", np.full((2, 3), np.inf), "utmDb holds NaN or infinite"),
        ("utmQ", np.ones((2, 1)) * 1j, "complex"),
    ],
)
def test_bad_dataset_specs_are_refused(field, value, message):
    from netvlad_port.datasets import DatasetError, DbBase

    from helpers import line, spec_fields

    fields = spec_fields(line(0, 10, 40), line(5))
    fields[field] = value
    with pytest.raises(DatasetError, match=message):
        DbBase("t", ".", ".", fields, "spec.mat")


def test_cache_files_stay_in_the_cache_dir(tiny_world, tmp_path):
    from netvlad_port import NetVladPortError
    from netvlad_port.clusters import get_clusters
    from netvlad_port.datasets import load_synthetic

    spec = make_net("vd16", "preL2_max", width=1 / 16, pca_dim=None)
    spec.layers = spec.layers[:-2]  # the trunk + preL2
    spec.meta["netID"] = "x/../../ESCAPE"
    with pytest.raises(NetVladPortError, match="cache files stay in --cache-dir"):
        get_clusters(spec, load_synthetic(tiny_world.data, "train"), k=2, cache_dir=tmp_path / "cache")
    assert not list(tmp_path.rglob("*.mat"))


def _spec_with(layer_name, **changes):
    spec = make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=8, seed=1)
    for layer in spec.layers:
        if layer.name == layer_name:
            for k, v in changes.items():
                if k == "weights":
                    layer.weights = v(layer.weights)
                else:
                    layer.params[k] = v
    return spec


@pytest.mark.parametrize(
    "layer,change,message",
    [
        ("conv1_1", {"stride": "2"}, r"layer 1 \('conv1_1'\) stride: expected numbers"),
        ("conv1_1", {"stride": 0}, r"stride: values must be >= 1"),
        ("conv1_1", {"stride": np.inf}, r"stride: NaN or infinite"),
        ("conv1_1", {"stride": 1.5}, r"stride: expected whole numbers"),
        ("conv1_1", {"pad": -1}, r"pad: values must be >= 0"),
        ("pool1", {"pool": [0, 2]}, r"pool: values must be >= 1"),
        ("relu1_1", {"leak": "x"}, r"leak: expected numbers"),
        ("preL2", {"param": [0, 1e-12, 1, 0.5]}, r"normalize window N must be a whole number >= 1"),
        ("conv1_1", {"weights": lambda w: [w[0] * np.nan, w[1]]}, r"weights\{1\} holds NaN or infinite"),
        ("conv1_1", {"weights": lambda w: [w[0] + 1j, w[1]]}, r"weights\{1\} holds complex values"),
    ],
)
def test_layer_fields_are_validated(layer, change, message):
    from netvlad_port import NetFormatError
    from netvlad_port.matconvnet import validate

    with pytest.raises(NetFormatError, match=message):
        validate(_spec_with(layer, **change))


def test_bad_average_image_and_char_matrix_type_are_refused(tmp_path):
    import scipy.io

    from netvlad_port import NetFormatError, load_spec

    spec = _spec_with("conv1_1")
    spec.meta["averageImage"] = np.ones((1, 1, 4), np.float32)
    with pytest.raises(NetFormatError, match="averageImage has shape"):
        _ = spec.average_rgb
    write_net(make_net("vd16", "preL2_max", width=1 / 16, pca_dim=None), tmp_path / "n.mat")
    net = scipy.io.loadmat(tmp_path / "n.mat")["net"]
    net[0, 0]["layers"][0, 0][0, 0]["type"] = np.array(["co", "nv"])
    scipy.io.savemat(tmp_path / "bad.mat", {"net": net})
    with pytest.raises(NetFormatError, match=r"layer 1.*'type' is not a string \(\['co', 'nv'\]\)"):
        load_spec(tmp_path / "bad.mat")


def test_image_edges_are_reported_per_file(two_models, tmp_path, monkeypatch):
    import os

    from PIL import Image as PILImage

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    PILImage.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "ok.jpg")
    PILImage.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(folder / "tiny.png")
    rgb16 = (rng.integers(0, 65535, (48, 64, 3))).astype(">u2")
    (folder / "deep.ppm").write_bytes(b"P6\n64 48\n65535\n" + rgb16.tobytes())
    os.symlink(folder / "gone.jpg", folder / "broken.jpg")
    out = tmp_path / "d.npy"
    args = ["extract", "--model", two_models / "a.mat", "--images", folder, "--out", out, "--quiet"]
    res = run(*args, "--on-error", "skip")
    assert res.exit_code == 0, res.output
    skipped = dict(line.split("\t") for line in out.with_name("d.npy.skipped.txt").read_text().splitlines())
    assert set(skipped) == {"tiny.png", "deep.ppm", "broken.jpg"}
    assert "cannot go through the network (layer" in skipped["tiny.png"] and "16-bit" in skipped["deep.ppm"]
    assert "broken link" in skipped["broken.jpg"]
    assert np.load(out).shape[0] == 1
    stop = run(*args, "--force")
    assert stop.exit_code == 1 and "broken.jpg" in stop.output  # the first bad file, named
    # a FIFO in a list file is refused at once, never read
    os.mkfifo(folder / "pipe.jpg")
    (tmp_path / "list.txt").write_text("ok.jpg\npipe.jpg\n")
    res = run("extract", "--model", two_models / "a.mat", "--images", tmp_path / "list.txt", "--root", folder,
              "--out", tmp_path / "l.npy", "--quiet", "--on-error", "skip")  # fmt: skip
    assert res.exit_code == 0 and "not a regular file" in (tmp_path / "l.npy.skipped.txt").read_text()
    # a decompression bomb is one more bad file
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    res = run("extract", "--model", two_models / "a.mat", "--images", tmp_path / "list.txt", "--root", folder,
              "--out", tmp_path / "b.npy", "--quiet", "--on-error", "skip")  # fmt: skip
    assert res.exit_code == 0 and "too large to decode safely" in (tmp_path / "b.npy.skipped.txt").read_text()


def test_list_files_are_taken_as_written(two_models, tmp_path):
    from netvlad_port.extract import list_images

    (tmp_path / "list.txt").write_text("#1.jpg\n a.jpg \n\nb.jpg\n")
    assert list_images(tmp_path / "list.txt")[1] == ["#1.jpg", " a.jpg ", "b.jpg"]
    (tmp_path / "bad.txt").write_bytes(b"ok.jpg\n\xff\xfe.jpg\n")
    res = run("extract", "--model", two_models / "a.mat", "--images", tmp_path / "bad.txt", "--out", tmp_path / "x.h5")
    assert res.exit_code == 1 and "bad.txt: not UTF-8" in res.output


def test_a_forward_pass_that_does_not_fit_in_memory_is_refused_per_file(two_models, tmp_path, monkeypatch):
    from netvlad_port import model as model_module

    monkeypatch.setattr(model_module, "available_memory", lambda: 50_000)
    out = tmp_path / "m.npy"
    res = run("extract", "--model", two_models / "a.mat", "--images", two_models / "images", "--out", out, "--quiet")
    assert res.exit_code == 1 and "cannot go through the network (it needs" in res.output
    assert "kB free" in res.output and not out.exists()


def test_an_empty_npz_is_one_error(tmp_path):
    from netvlad_port.datasets import DatasetError, from_npz

    (tmp_path / "e.npz").write_bytes(b"")
    (tmp_path / "l.txt").write_text("a.jpg\n")
    with pytest.raises(DatasetError, match="e.npz: not a ground-truth .npz"):
        from_npz(tmp_path / "e.npz", tmp_path / "l.txt", tmp_path / "l.txt", tmp_path)
