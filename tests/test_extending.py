"""Each kind of extension is one registration, made here in the test file, then used through the CLI:
a loss with graded labels, a layer type (with MAT reader/writer, converted folder and addLayers token),
and a dataset family."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import netvlad_port
from netvlad_port.cli import main
from netvlad_port.datasets import DATASETS, DatasetError, load_synthetic, open_dataset, register_dataset
from netvlad_port.fixtures import make_net
from netvlad_port.layers import MatLayer
from netvlad_port.losses import LOSSES, LossOutput, register_loss
from netvlad_port.matconvnet import mat, write_net
from netvlad_port.matconvnet.spec import LAYER_TYPES, LayerSpec, LayerType, register_layer
from netvlad_port.registry import Registry


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- a loss ---------------------------------------------------------------------------------------
CALLS = []


def graded_contrastive(q, p, negs, *, labels=None, margin=0.5):
    """Contrastive loss on the tuple's pairs with the dataset's similarity labels."""
    CALLS.append((np.asarray(labels).tolist(), margin))
    x = torch.cat([p[None], negs])
    d = ((q[None] - x) ** 2).sum(1).clamp_min(1e-12).sqrt()
    y = torch.as_tensor(labels, dtype=d.dtype)
    return LossOutput((y * d**2 / 2 + (1 - y) * (margin - d).clamp_min(0) ** 2 / 2).sum(), len(x))


@pytest.fixture
def contrastive():
    register_loss("test-contrastive", graded_contrastive, labels="binary")
    yield
    LOSSES.unregister("test-contrastive")


def train_args(world, *more):
    return ["train", "--dataset", "synthetic", "--root", world.data, "--model", world.net, *more]


def test_a_registered_loss_trains_through_the_cli(contrastive, tiny_world, tmp_path):
    CALLS.clear()
    out = tmp_path / "run"
    more = "--loss test-contrastive --loss-param margin=0.7 --epochs 1 --pca-dim 0 --n-neg-choice 20"
    res = run(
        *train_args(tiny_world, *more.split(), "--save-frequency", "8", "--comp-feats-frequency", "8", "--out", out)
    )
    assert res.exit_code == 0, res.output
    labels, margins = zip(*CALLS)
    assert set(margins) == {0.7}
    assert all(lab[0] == 1.0 and set(lab[1:]) == {0.0} for lab in labels)  # positive first, negatives beyond 25 m
    losses = [r["loss"] for r in map(json.loads, (out / "log.jsonl").open()) if "loss" in r]
    assert len(losses) == 24 // 4 and all(np.isfinite(losses))
    assert netvlad_port.load(out / "final").output_dim == 32 * 4  # D = 512 / 16, K = 4
    assert "test-contrastive" in run("train", "--help").output


def test_unknown_loss_lists_the_registered_ones(tiny_world, tmp_path):
    res = run(*train_args(tiny_world, "--loss", "nope", "--out", tmp_path / "x"))
    assert res.exit_code == 2 and "sare-ind" in res.output and "triplet" in res.output


# --- a layer type -----------------------------------------------------------------------------------
class GeMTest(MatLayer):
    """Generalised mean over H x W with a trainable exponent: (mean x^p)^(1/p)."""

    matlab_type = "layerGeMTest"

    def __init__(self, spec, in_channels=0):
        super().__init__(spec)
        self.p = torch.nn.Parameter(torch.tensor(np.asarray(spec.weights[0], np.float32).reshape(1)))

    def forward(self, x):
        return x.clamp_min(1e-6).pow(self.p).mean(dim=(2, 3), keepdim=True).pow(1 / self.p)

    def weight_params(self):
        return [self.p]

    def matlab_arrays(self, tensors):
        return [tensors[0].detach().double().numpy().reshape(1, 1)]


@pytest.fixture
def gem_layer():
    register_layer(LayerType(
        "layerGeMTest", GeMTest, n_weights=(1,), custom=True, shape=lambda l, s, w: (1, 1, s[2]),
        fields=lambda l: {"type": mat.string("custom"), "name": mat.string(l.name),
                          "weights": mat.weights_cell(l.weights), "precious": mat.false()},
        recognise=lambda f: f.get("name") == "gem:core", token="gemtest",
        aggregate=lambda d, clusters, alpha: LayerSpec("layerGeMTest", "gem:core", [np.full((1, 1), 3, np.float32)]),
    ))  # fmt: skip
    yield
    LAYER_TYPES.unregister("layerGeMTest")


@pytest.mark.parametrize("encoding", ["struct", "classdef"])
def test_a_registered_layer_type_works_through_the_cli(gem_layer, tmp_path, encoding):
    spec = make_net("vd16", "preL2_gemtest", width=1 / 16, pca_dim=None, seed=2)  # addLayers token
    assert [l.name for l in spec.layers][-2:] == ["gem:core", "postL2"]
    write_net(spec, tmp_path / "gem.mat", encoding=encoding)
    assert run("convert", tmp_path / "gem.mat", "-o", tmp_path / "gem").exit_code == 0
    info = run("info", tmp_path / "gem", "--image-size", "48x64").output
    assert "layerGeMTest" in info and "method preL2_gemtest" in info
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / f"{i}.png")
    res = run("extract", "--model", tmp_path / "gem", "--images", images, "--out", tmp_path / "d.npy", "--quiet")
    assert res.exit_code == 0, res.output
    model = netvlad_port.load(tmp_path / "gem.mat")
    x = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(images / f"{i}.png"), np.float32)).permute(2, 0, 1) for i in range(3)]
    )
    with torch.no_grad():
        pre = model.trace(x)[-3]  # preL2 output
        gem = pre.clamp_min(1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
        expected = gem / (gem.norm(dim=1, keepdim=True) + 1e-12)
    assert np.allclose(np.load(tmp_path / "d.npy"), expected.numpy(), atol=1e-6)
    assert run("export-mat", tmp_path / "gem", "-o", tmp_path / "back.mat").exit_code == 0
    assert netvlad_port.load_spec(tmp_path / "back.mat").layers[-2].type == "layerGeMTest"


# --- a dataset family -------------------------------------------------------------------------------
@pytest.fixture
def mini_family():
    from netvlad_port.train import RECIPES, register_recipe

    register_recipe("mini-recipe", {"learning_rate": 2e-3, "n_neg_choice": 20}, "the family's recipe", base="deepibl")
    register_dataset(
        "Mini_Set", lambda split, root, spec_dir: load_synthetic(root, split), ("train", "val", "test"), "mini-recipe"
    )
    yield
    DATASETS.unregister("Mini_Set")
    RECIPES.unregister("mini-recipe")


def test_a_registered_dataset_works_through_the_cli(mini_family, tiny_world, tmp_path):
    res = run(
        "test",
        "--model",
        tiny_world.net,
        "--dataset",
        "mini-set_TEST",
        "--root",
        tiny_world.data,
        "--out",
        tmp_path / "eval",
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["num_queries"] == 24
    res = run(
        "pca",
        "--model",
        tiny_world.net,
        "--dataset",
        "MINI_SET-train",
        "--root",
        tiny_world.data,
        "--pca-dim",
        "8",
        "--out",
        tmp_path / "white",
    )
    assert res.exit_code == 0, res.output and netvlad_port.load(tmp_path / "white").output_dim == 8
    res = run("train", tiny_world.net, "--dataset", "mini_set", "--root", tiny_world.data, "--epochs", "1",
              "--pca-dim", "0", "--out", tmp_path / "run", "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    options = json.loads((tmp_path / "run" / "checkpoint_latest" / "state.json").read_text())["options"]
    assert options["learning_rate"] == 2e-3 and options["n_neg_choice"] == 20  # the family's recipe


def test_dataset_names_are_forgiving_and_errors_list_the_valid_ones(tiny_world):
    a, b, c = (open_dataset(n, tiny_world.data) for n in ("synthetic-test", "synthetic_test", "Synthetic-Test"))
    assert a.name == b.name == c.name == "synthetic_test" and a.num_queries == c.num_queries == 24
    with pytest.raises(DatasetError, match="pitts30k-{train,val,test}.*tokyo247"):
        open_dataset("pitts31k-test")
    with pytest.raises(DatasetError, match="splits train, val, test"):
        open_dataset("pitts30k-dev")
    res = run("train", "--dataset", "tokyo247", "--model", tiny_world.net, "--out", "x")
    assert res.exit_code == 1 and "train and val splits" in res.output


def test_registry_refuses_a_taken_name():
    reg = Registry("thing", builtins="netvlad_port.errors")
    reg.register("a", 1, aliases=("b",))
    with pytest.raises(netvlad_port.NetVladPortError, match="already registered"):
        reg.register("b", 2)
    assert reg["b"] == 1 and reg.register("a", 3, replace=True) == 3 and reg["a"] == 3
