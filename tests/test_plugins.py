"""Plug-ins, recipes and the trainer's seams: an out-of-tree plug-in found through the entry-point
group and used from the shell, the core never loading a wing it does not need, the API and the CLI
training identically, loss parameters checked up front, and one margin for loss, mining and rank loss."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from netvlad_port.cli import main

PLUGIN = Path(__file__).parent / "plugin_example"
TINY = ["--epochs", "1", "--pca-dim", "0", "--n-neg-choice", "20", "--device", "cpu", "--quiet"]


def run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def losses(folder: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (folder / "log.jsonl").open()) if "loss" in r]


def test_an_out_of_tree_plugin_trains_from_the_shell(tiny_world, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGIN), os.environ.get("PYTHONPATH", "")])}
    args = ["train", str(tiny_world.net), "--dataset", "synthetic", "--root", str(tiny_world.data), "--loss",
            "my-contrastive", "--loss-param", "margin=0.7", "--out", str(tmp_path / "run"), *TINY]  # fmt: skip
    res = subprocess.run([sys.executable, "-m", "netvlad_port.cli", *args], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    values = losses(tmp_path / "run")
    assert len(values) == 6 and all(np.isfinite(values)) and any(v > 0 for v in values)
    res = subprocess.run([sys.executable, "-m", "netvlad_port.cli", *args], capture_output=True, text=True)
    assert res.returncode != 0 and "my-contrastive" in res.stderr  # not installed: not a choice


def test_the_plugin_registers_a_sampler_the_trainer_uses(tiny_world, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN))
    import my_vpr_plugin

    from netvlad_port.datasets import load_synthetic
    from netvlad_port.losses import LOSSES
    from netvlad_port.train import Trainer, TrainOptions, samplers

    if "my-contrastive" not in LOSSES:  # plug-ins were loaded before its path was added: register by hand
        my_vpr_plugin.register()
    try:
        opts = TrainOptions.create(loss="my-contrastive", back_prop_to_layer="conv5_1", n_neg_choice=20, test0=False)
        t = Trainer(tiny_world.spec, load_synthetic(tiny_world.data, "train"), None, opts, tmp_path,
                    log=lambda *a: None).run(stop_after=1)  # fmt: skip
        ctx = samplers.MiningContext(t.db_train, t.train_feats, t.neg_cache, t.rng, opts, t.margin, t.loss)
        tuples = [t.sampler.sample(ctx, iq) for iq in range(6)]
        assert t.sampler.name == "hardest-one" and {len(x.negatives) for x in tuples if x is not None} == {1}
    finally:
        LOSSES.unregister("my-contrastive")
        samplers.SAMPLERS.unregister("hardest-one")


def test_the_core_loads_no_wing_it_does_not_need(tiny_world):
    code = ("import sys; import netvlad_port.cli as c; before = [m for m in sys.modules if '.plugins.' in m]; "
            f"c.main(['info', {str(tiny_world.net)!r}], standalone_mode=False); "
            "print(before, [m for m in sys.modules if '.plugins.' in m])")  # fmt: skip
    res = run(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[] []"
    res = run("import sys; from netvlad_port.losses import LOSSES; LOSSES['stml']; "
              "print(sorted(m for m in sys.modules if '.plugins.' in m))")  # fmt: skip
    assert "netvlad_port.plugins.stml.losses" in res.stdout  # asked for a wing's name: the wing loads


def test_api_and_cli_train_identically(tiny_world, tmp_path):
    from netvlad_port.train import train

    common = {"n_epoch": 1, "pca_dim": 0, "n_neg_choice": 20, "device": "cpu"}
    train(None, None, tiny_world.net, tmp_path / "api", dataset="synthetic", root=tiny_world.data, log=lambda *a: None,
          **common)  # fmt: skip
    res = CliRunner().invoke(main, ["train", str(tiny_world.net), "--dataset", "synthetic", "--root",
                                    str(tiny_world.data), "--out", str(tmp_path / "cli"), *TINY])  # fmt: skip
    assert res.exit_code == 0, res.output
    api, cli = (tmp_path / "api" / "log.jsonl").read_text(), (tmp_path / "cli" / "log.jsonl").read_text()
    assert api == cli and len(losses(tmp_path / "api")) == 6
    options = json.loads((tmp_path / "cli" / "checkpoint_latest" / "state.json").read_text())["options"]
    assert options["learning_rate"] == 1e-3 and options["back_prop_to_layer"] == "conv5_1"  # the family's recipe


def test_a_recipe_is_defined_once_and_options_override_it():
    from netvlad_port.train import RECIPES, TrainOptions

    opts = TrainOptions.from_recipe("stml", n_epoch=2)
    assert opts.loss == "stml" and opts.attention == ("deattention-v1", "se") and opts.n_epoch == 2
    assert opts.learning_rate == RECIPES["stml"].options["learning_rate"] == 1e-3
    assert TrainOptions.from_recipe().back_prop_to_layer == "conv5_1"  # deepibl, the default
    res = CliRunner().invoke(main, ["train", "--help"])
    assert "--recipe" in res.output and "--guidance" in res.output  # the sTML wing's options, added when asked


def test_a_misspelled_loss_param_is_refused_before_any_cache(tiny_world, tmp_path):
    res = CliRunner().invoke(main, ["train", str(tiny_world.net), "--dataset", "synthetic", "--root",
                                    str(tiny_world.data), "--loss", "triplet", "--loss-param", "marign=0.5", "--out",
                                    str(tmp_path / "run"), *TINY])  # fmt: skip
    assert res.exit_code == 1 and "--loss-param marign: --loss triplet takes margin, exclude_very_hard" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "run" / "trunk_cache").exists()


@pytest.mark.parametrize("given", [{"margin": 0.3}, {"loss_params": {"margin": 0.3}}])
def test_one_margin_drives_loss_mining_and_rank_loss(tiny_world, tmp_path, monkeypatch, given):
    from netvlad_port.datasets import load_synthetic
    from netvlad_port.train import Trainer, TrainOptions, samplers, validation

    mined, ranked = [], []
    mine, rank = samplers.mine_tuple, validation.rank_loss
    monkeypatch.setattr(samplers, "mine_tuple", lambda *a, **k: mined.append(k["margin"]) or mine(*a, **k))
    monkeypatch.setattr(validation, "rank_loss", lambda *a: ranked.append(a[-1]) or rank(*a))
    opts = TrainOptions.create(loss="triplet", back_prop_to_layer="conv5_1", n_neg_choice=20, n_epoch=1, pca_dim=0,
                               **given)  # fmt: skip
    data = tiny_world.data
    t = Trainer(tiny_world.spec, load_synthetic(data, "train"), load_synthetic(data, "val"), opts, tmp_path,
                log=lambda *a: None).run(stop_after=1)  # fmt: skip
    assert t.loss_params["margin"] == 0.3 and set(mined) == {0.3} and set(ranked) == {0.3}
