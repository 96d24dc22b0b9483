"""No wrong number without a word (issue 22): dimensions the data or the network cannot give are refused
before any work, two files' same-named images are different images to `search`, a resumed run logs each
batch once, and the backend follows the file. (The fp16 and feature-cache cases are in test_extract.py and
test_evaluate.py.)"""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from netvlad_port.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_pca_dim_the_images_cannot_give_is_refused(tiny_world, tmp_path):
    res = run("pca", tiny_world.net, "--dataset", "synthetic-train", "--root", tiny_world.data, "--pca-dim", "64",
              "-o", tmp_path / "white")  # fmt: skip
    assert res.exit_code == 1 and "PCA of 40 training images has at most 40 dimensions" in res.output
    assert not (tmp_path / "white").exists()


def test_train_checks_the_pca_dim_before_the_first_epoch(tiny_world, tmp_path):
    res = run(
        "train",
        tiny_world.net,
        "--dataset",
        "synthetic",
        "--root",
        tiny_world.data,
        "--epochs",
        "1",
        "-o",
        tmp_path / "run",
        "--quiet",
    )  # fmt: skip  (the recipe's pcaDim 4096 on a 128-D network)
    assert res.exit_code == 1 and "pcaDim 4096 must be smaller than the descriptor dimension 128" in res.output
    assert not list(tmp_path.glob("run/epoch_*")) and not (tmp_path / "run" / "log.jsonl").exists()


def test_dims_and_half_that_would_be_recorded_wrong_are_refused(tiny_world, tmp_path):
    images = tiny_world.data / "images" / "test"
    res = run("extract", tiny_world.net, "--images", images, "-o", tmp_path / "d.h5", "--dim", "1000", "--quiet")
    assert res.exit_code == 1 and "--dim 1000: must be between 1 and the descriptor dimension 128" in res.output
    res = run("test", tiny_world.net, "--dataset", "synthetic-test", "--root", tiny_world.data, "--dim", "1000",
              "-o", tmp_path / "t", "--quiet")  # fmt: skip
    assert res.exit_code == 1 and "--dim 1000" in res.output and not (tmp_path / "t").exists()
    res = run("extract", tiny_world.net, "--images", images, "-o", tmp_path / "d.bin", "--half", "--quiet")
    assert res.exit_code == 1 and "--half needs h5 or npy" in res.output and not (tmp_path / "d.bin").exists()
    res = run("extract", tiny_world.net, "--images", images, "-o", tmp_path / "d.h5", "--batch-size", "0")
    assert res.exit_code == 1 and "--batch-size 0: must be at least 1" in res.output


def test_search_pairs_same_named_images_of_two_files(tiny_world, tmp_path):
    images = tiny_world.data / "images" / "test"
    assert run("extract", tiny_world.net, "--images", images, "-o", tmp_path / "a.h5", "--quiet").exit_code == 0
    shutil.copy(tmp_path / "a.h5", tmp_path / "b.h5")  # the same images, described twice
    res = run("search", "--db", tmp_path / "a.h5", "--queries", tmp_path / "b.h5", "-k", "1", "-o", tmp_path / "p")
    assert res.exit_code == 0, res.output
    pairs = [line.split() for line in (tmp_path / "p").read_text().splitlines()]
    assert pairs and all(q == d for q, d in pairs)  # each image's nearest is itself, in the other file
    res = run("search", "--db", tmp_path / "a.h5", "--queries", tmp_path / "a.h5", "-k", "1", "-o", tmp_path / "s")
    assert all(q != d for q, d in (line.split() for line in (tmp_path / "s").read_text().splitlines()))
    res = run("search", "--db", tmp_path / "a.h5", "--queries", tmp_path / "b.h5", "-k", "0", "-o", tmp_path / "z")
    assert res.exit_code == 1 and "-k 0: pairs per query must be at least 1" in res.output


def test_a_resumed_run_logs_each_batch_once(tiny_world, tmp_path):
    from netvlad_port.datasets import load_synthetic
    from netvlad_port.train import Trainer, TrainOptions

    data = tiny_world.data
    tr, va = load_synthetic(data, "train"), load_synthetic(data, "val")
    opts = TrainOptions.create(back_prop_to_layer="conv5_1", n_neg_choice=20, n_epoch=2, pca_dim=0, save_frequency=8)
    Trainer(tiny_world.spec, tr, va, opts, tmp_path, log=lambda *a: None).run(stop_after=3)  # saved before batch 4
    with open(tmp_path / "log.jsonl", "a") as f:  # then killed after two more batches, not yet checkpointed
        f.writelines(json.dumps({"epoch": 1, "batch": b, "lr": 1e-4, "loss": 9.0}) + "\n" for b in (4, 5))
    Trainer.resume(tmp_path, tr, va, log=lambda *a: None).run()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
    batches = [(r["epoch"], r["batch"]) for r in records if "batch" in r]
    assert len(batches) == len(set(batches)) == 12  # 2 epochs x 6 batches, none twice
    assert [r["epoch"] for r in records if "val_rankloss" in r] == [1, 2]


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tiny_world, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"epoch": 1, "batch": 1, "lr": 0.001, "loss": 1.0}\n')  # Ctrl-C before any save
    res = run("train", tiny_world.net, "--dataset", "synthetic", "--root", tiny_world.data, "--epochs", "1",
              "--pca-dim", "0", "--n-neg-choice", "20", "-o", out, "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len([line for line in (out / "log.jsonl").open() if '"batch"' in line]) == 6


def test_the_backend_follows_the_file(tiny_world, tmp_path):
    images = tiny_world.data / "images" / "test"
    assert run("export-onnx", tiny_world.net, "-o", tmp_path / "m.onnx").exit_code == 0
    res = run("extract", tmp_path / "m.onnx", "--images", images, "-o", tmp_path / "o.h5", "--quiet")
    assert res.exit_code == 0, res.output  # no --backend needed for a .onnx file
    ref = run("extract", tiny_world.net, "--images", images, "-o", tmp_path / "t.h5", "--quiet")
    assert ref.exit_code == 0
    from netvlad_port.feature_store import h5_names, read_h5_descriptors

    names = sorted(h5_names(tmp_path / "t.h5"))
    a, b = (read_h5_descriptors(tmp_path / f, names) for f in ("o.h5", "t.h5"))
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    res = run("extract", tmp_path, "--backend", "onnxruntime", "--images", images, "-o", tmp_path / "x.h5")
    assert res.exit_code == 1 and "a folder; --backend onnxruntime takes the .onnx file" in res.output
    assert run("export-torchscript", tiny_world.net, "-o", tmp_path / "m.pt").exit_code == 0
    res = run("extract", tmp_path / "m.pt", "--images", images, "-o", tmp_path / "y.h5")
    assert res.exit_code == 1 and "a TorchScript file" in res.output and "Traceback" not in res.output


def test_a_model_giving_nan_stops_at_the_first_image_and_names_the_layer(tmp_path):
    from PIL import Image

    from netvlad_port.fixtures import make_net
    from netvlad_port.matconvnet import write_net

    spec = make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=None, seed=1)
    conv = next(layer for layer in spec.layers if layer.name == "conv3_1")
    conv.weights[0] = np.full_like(conv.weights[0], 1e38)  # a tampered file: finite weights, infinite outputs
    write_net(spec, tmp_path / "broken.mat")
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.jpg")
    res = run("extract", tmp_path / "broken.mat", "--images", tmp_path / "images", "-o", tmp_path / "d.h5", "--quiet")
    assert res.exit_code == 1 and "0.jpg" in res.output and "layer 'conv3_1' (conv) is the first" in res.output
    assert not (tmp_path / "d.h5").exists()  # nothing half-written
    res = run("extract", tmp_path / "broken.mat", "--images", tmp_path / "images", "-o", tmp_path / "s.h5", "--quiet",
              "--on-error", "skip")  # fmt: skip
    assert res.exit_code == 0 and "3 skipped" in res.output


def test_errors_that_lead_somewhere(tiny_world, tmp_path, monkeypatch):
    """A whitened network is not whitened twice unless asked; reused cluster caches are named; an ImageNet
    classifier gets the hint to crop it; --images outside --root is one line."""
    from netvlad_port.fixtures import make_net, write_imagenet_model
    from netvlad_port.matconvnet import write_net

    write_net(make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=8, seed=1), tmp_path / "white.mat")
    pca = ["pca", tmp_path / "white.mat", "--dataset", "synthetic-train", "--root", tiny_world.data, "--pca-dim", "4"]
    res = run(*pca, "-o", tmp_path / "twice")
    assert res.exit_code == 1 and "already ends in WPCA" in res.output and "--again" in res.output
    assert run(*pca, "-o", tmp_path / "twice", "--again", "--quiet").exit_code == 0

    cluster = ["cluster", tmp_path / "imagenet.mat", "--layer", "conv5_3", "--dataset", "synthetic-train", "--root",
               tiny_world.data, "-k", "4", "--cache-dir", tmp_path / "cache", "--quiet"]  # fmt: skip
    write_imagenet_model(tmp_path / "imagenet.mat", "vd16", width=1 / 16, seed=0)
    assert run(*cluster, "-o", tmp_path / "c1").exit_code == 0
    res = run(*cluster, "-o", tmp_path / "c2")
    assert res.exit_code == 0 and "reusing the cached clusters" in res.output and "_k004_clst.mat" in res.output

    res = run("info", tmp_path / "imagenet.mat")
    assert res.exit_code == 1 and "unsupported layer type 'dropout'" in res.output and "--layer conv5_3" in res.output

    monkeypatch.chdir(tiny_world.data)  # --images relative, --root absolute
    res = run("extract", tiny_world.net, "--images", "images/test", "--root", tiny_world.data / "queries", "-o",
              tmp_path / "r.h5")  # fmt: skip
    assert res.exit_code == 1 and "not inside --root" in res.output and "Traceback" not in res.output
    res = run("extract", tiny_world.net, "--images", "images/test", "--root", tiny_world.data, "-o",
              tmp_path / "r.h5", "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output


def test_ctrl_c_during_an_h5_extraction_says_what_was_kept(tiny_world, tmp_path, monkeypatch):
    from netvlad_port.model import SimpleNN

    images = tiny_world.data / "images" / "test"
    calls, forward = [], SimpleNN.forward

    def interrupted_after_two_batches(self, x):
        calls.append(len(x))
        if len(calls) > 2:
            raise KeyboardInterrupt
        return forward(self, x)

    monkeypatch.setattr(SimpleNN, "forward", interrupted_after_two_batches)
    args = ["extract", tiny_world.net, "--images", images, "-o", tmp_path / "d.h5", "--batch-size", "4",
            "--workers", "0", "--quiet"]  # fmt: skip
    res = run(*args)
    assert res.exit_code == 130 and "Traceback" not in res.output, res.output
    assert res.output.strip().splitlines() == [
        f"{tmp_path / 'd.h5'}: interrupted; 8 images saved (8 in the file), rerunning the same command continues"
    ]
    monkeypatch.setattr(SimpleNN, "forward", forward)
    res = run(*args)
    assert res.exit_code == 0 and "8 already present" in res.output, res.output


def test_parity_names_shapes_that_differ_and_suggests_the_cpu_normalize(tmp_path):
    from netvlad_port.loading import load_spec
    from netvlad_port.matconvnet import write_net

    from helpers import FASTPOW_SUITE, suite

    s = suite("tiny_vlad")
    spec = load_spec(s.net_path)
    next(layer for layer in spec.layers if layer.type == "pool").params["stride"] = (1, 1)  # another network
    write_net(spec, tmp_path / "other.mat")
    res = run("parity", tmp_path / "other.mat", s.dir / "ref.mat")
    assert res.exit_code == 1 and "inf" not in res.output and len(res.output.strip().splitlines()) == 1
    assert "layer 'pool1': the shapes differ: ours 31x39x8x5, the dump's 16x20x8x5" in res.output
    res = run("parity", s.net_path, suite("tiny_vladv2").dir / "ref.mat")  # weights of another shape: named
    row = next(r for r in res.output.splitlines() if r.startswith("dzdw       vlad:core{2}"))
    assert row.endswith("FAIL: the shapes differ: ours 1x1x16x4, the dump's 1x4"), row
    cpu = suite(FASTPOW_SUITE)
    res = run("parity", cpu.net_path, cpu.dir / "ref.mat")
    assert res.exit_code == 1 and "first failure: forward at 'preL2'" in res.output
    assert "rerun with --normalize matconvnet-cpu: this layer agrees with the dump that way" in res.output


def _tampered(d, what):
    def set_field(struct, field, value):
        struct = struct.copy()
        struct[0, 0][field] = value
        return struct

    if what == "sare_variant unknown":
        d["sare_variant"] = np.array(["trainNothing"])
    elif what == "sare_variant empty":
        d["sare_variant"] = np.zeros((0, 0))
    elif what.startswith("num_layers"):
        d["train"] = set_field(d["train"], "num_layers", {"NaN": np.array([[np.nan]]), "10000": np.array([[1e4]]),
                                                          "empty": np.zeros((0, 0))}[what.split()[1]])  # fmt: skip
    elif what == "lr string":
        d["sgd"] = set_field(d["sgd"], "lr", np.array(["x"]))
    elif what == "dzdx missing":
        del d["dzdx"]
    elif what == "sare_all not a struct":
        d["sare_all"] = np.ones((2, 2))
    elif what == "feats empty":
        d["feats"] = np.zeros((0, 0))
    return d


@pytest.mark.parametrize(
    "what, field",
    [("sare_variant unknown", "'sare_variant' 'trainNothing'"), ("sare_variant empty", "'sare_variant' is empty"),
     ("num_layers NaN", "'train.num_layers'"), ("num_layers 10000", "'train.num_layers' 10000: the model has 12"),
     ("num_layers empty", "'train.num_layers'"), ("lr string", "'sgd.lr'"), ("dzdx missing", "'dzdx'"),
     ("sare_all not a struct", "'sare_all' is not a struct"), ("feats empty", "'feats' must be D x N")],
)  # fmt: skip
def test_run_parity_refuses_a_tampered_dump_with_the_project_error(what, field):
    import netvlad_port
    from netvlad_port.errors import NetVladPortError
    from netvlad_port.parity import load_dump, run_parity

    from helpers import suite

    s = suite("tiny_vlad")
    dump = _tampered(load_dump(s.dir / "ref.mat"), what)
    with pytest.raises(NetVladPortError) as info:
        run_parity(netvlad_port.load(s.net_path), dump)
    assert field in str(info.value) and "\n" not in str(info.value)
