"""Every trainWeakly / train*.m option changes what MATLAB's would, or is refused; --resume keeps a
run's options; MATLAB's random draws choose the validation subsets; fp32 is exact on GPUs."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import netvlad_port
from netvlad_port import NetVladPortError
from netvlad_port.cli import main
from netvlad_port.datasets import load_synthetic
from netvlad_port.matconvnet import write_net
from netvlad_port.matlab_random import MatlabRandom
from netvlad_port.train import Trainer, TrainOptions

BASE = {"learning_rate": 0.01, "back_prop_to_layer": "conv5_1", "n_neg_choice": 20, "test0": False, "n_epoch": 1}


@pytest.fixture(scope="module")
def world(tiny_world):
    tiny_world.train, tiny_world.val = load_synthetic(tiny_world.data, "train"), load_synthetic(tiny_world.data, "val")
    return tiny_world


def trainer(world, tmp_path, spec=None, **options) -> Trainer:
    opts = TrainOptions.create(**{**BASE, **options})
    return Trainer(spec or world.spec, world.train, world.val, opts, tmp_path, log=lambda *a: None)


def weights(t: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.params]


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.5), (0.0, 0.0), (0.9, 0.5)])
def test_momentum_and_weight_decay_reach_the_update(world, tmp_path, momentum, weight_decay):
    t = trainer(world, tmp_path, momentum=momentum, weight_decay=weight_decay)
    t.run(stop_after=1)
    w1 = weights(t)
    t.run(stop_after=1)
    plain_sgd = [w - 0.01 * (p.grad + weight_decay * w) for w, p in zip(w1, t.params)]  # p.grad = G / T
    same = all(torch.allclose(p.detach(), e, rtol=1e-5, atol=1e-8) for p, e in zip(t.params, plain_sgd))
    assert same == (momentum == 0.0)


def test_per_layer_multipliers_are_read_used_and_written_back(world, tmp_path):
    spec = netvlad_port.load_spec(world.net)
    conv5_1 = next(l for l in spec.layers if l.name == "conv5_1")
    conv5_1.multipliers = {"learningRate": [0.0, 0.0], "weightDecay": [1.0, 1.0]}
    write_net(spec, tmp_path / "mults.mat")
    spec = netvlad_port.load_spec(tmp_path / "mults.mat")
    assert next(l for l in spec.layers if l.name == "conv5_1").multipliers["learningRate"] == [0.0, 0.0]
    t = trainer(world, tmp_path / "run", spec=spec)
    layers = {l.name: l for l in t.model.layers}
    before = {n: layers[n].weight.detach().clone() for n in ("conv5_1", "conv5_2")}
    t.run(stop_after=2)
    assert torch.equal(layers["conv5_1"].weight, before["conv5_1"])  # learning rate x 0
    assert not torch.equal(layers["conv5_2"].weight, before["conv5_2"])
    t.save_epoch_weights()
    saved = netvlad_port.load_spec(tmp_path / "run" / "epoch_000001")
    assert next(l for l in saved.layers if l.name == "conv5_1").multipliers == conv5_1.multipliers


def test_fix_layers_are_not_updated_and_unknown_names_refused(world, tmp_path):
    t = trainer(world, tmp_path, fix_layers=("conv5_2",))
    layers = {l.name: l for l in t.model.layers}
    before = layers["conv5_2"].weight.detach().clone()
    t.run(stop_after=1)
    assert torch.equal(layers["conv5_2"].weight, before)
    with pytest.raises(NetVladPortError, match="fixLayers: no layer named conv9_9"):
        trainer(world, tmp_path, fix_layers=("conv9_9",))


def test_start_epoch_replays_the_schedule(world, tmp_path):
    base = trainer(world, tmp_path, n_epoch=9).comp_freq
    t = trainer(world, tmp_path, n_epoch=9, start_epoch=7, lr_down_freq=5, lr_down_factor=4)
    assert t.epoch == 7 and t.lr == pytest.approx(0.01 / 4) and t.comp_freq == 4 * base  # the drop at epoch 6


@pytest.mark.parametrize("start_epoch", [1, 5, 12])
def test_steplr_schedule_is_torchs_steplr_stepped_with_the_epoch(world, tmp_path, start_epoch):
    """Nanne main.py:456,509-511: StepLR(lrStep 5, lrGamma 0.5), ``scheduler.step(epoch)`` before each epoch;
    the cache refresh interval stays (MATLAB's rule would double it)."""
    p = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([p], lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(sgd, step_size=5, gamma=0.5)
    t = trainer(world, tmp_path, n_epoch=30, start_epoch=start_epoch, lr_schedule="steplr", lr_down_freq=5)
    base = t.comp_freq
    for e in range(start_epoch, 31):
        t.lr_drop(e)  # as run() does at the start of epoch e
        with pytest.warns(UserWarning):  # torch deprecates step(epoch); the original calls it so
            scheduler.step(e)
        assert t.lr == pytest.approx(sgd.param_groups[0]["lr"], rel=1e-12), e
    assert t.comp_freq == base and t.lr == pytest.approx(0.01 / 2**6)


def nannes_loop(recalls: list[float], patience: int, eval_every: int) -> int:
    """Nanne main.py:513-533 (STML tasks/train.py:197-219,345 alike): the epoch it stops after."""
    not_improved, best_score = 0, 0
    for epoch, r in enumerate(recalls, 1):
        if epoch % eval_every == 0:
            if r > best_score:
                not_improved, best_score = 0, r
            else:
                not_improved += 1
            if patience > 0 and not_improved > (patience / eval_every):
                return epoch
    return len(recalls)


def test_patience_stops_where_the_originals_stop(world, tmp_path, monkeypatch):
    from netvlad_port.train.schedule import out_of_patience

    rng = np.random.default_rng(0)
    for _ in range(300):  # the rule itself, on recall sequences with ties and plateaus
        recalls = list(rng.integers(0, 4, 20) / 4)
        patience, every = int(rng.integers(0, 5)), int(rng.integers(1, 3))
        tested = {e: [r] for e, r in enumerate(recalls, 1) if e % every == 0}
        stop = next((e for e in range(1, 21) if out_of_patience({k: v for k, v in tested.items() if k <= e}, 0,
                                                                 patience, every)), 20)  # fmt: skip
        assert stop == nannes_loop(recalls, patience, every), (recalls, patience, every)
    # and in a run: recall@1 the same after every epoch -> epochs 2 and 3 bring no improvement, stop after 3
    monkeypatch.setattr(Trainer, "evaluate", lambda self, key="val", feats=None: ([0.5, 0.5, 0.5], 0.0))
    t = trainer(world, tmp_path, n_epoch=8, patience=1, select_by=1, recall_ns=(1, 5, 10))
    t.run()
    assert sorted(t.history.val_recall) == [1, 2, 3] and t.epoch == 4
    with pytest.raises(NetVladPortError, match="--patience must be"):
        trainer(world, tmp_path, patience=-1).opts.objective()


def test_epoch_test_frequency_tests_the_last_epoch_too(world, tmp_path):
    t = trainer(world, tmp_path, n_epoch=3, epoch_test_frequency=2, recall_ns=(1, 5))
    t.run()
    assert sorted(t.history.val_recall) == sorted(t.history.train_recall) == [2, 3]
    assert all(len(r) == 2 for r in t.history.val_recall.values())


def test_negative_counts(world, tmp_path, monkeypatch):
    from netvlad_port.train import samplers

    tuples = []
    mine = samplers.mine_tuple
    monkeypatch.setattr(samplers, "mine_tuple", lambda *a, **k: tuples.append(mine(*a, **k)) or tuples[-1])
    t = trainer(world, tmp_path, n_neg_cap=3, n_neg_cache=5)
    t.run(stop_after=1)
    assert [len(x.negatives) for x in tuples if x] == [3] * sum(x is not None for x in tuples) and tuples
    assert {len(c) for c in t.neg_cache} == {0, 5}


def test_validation_subsets_are_matlabs_draws(world, tmp_path, monkeypatch):
    from netvlad_port.train import validation

    seen = []
    real = validation.test_from_fn
    monkeypatch.setattr(validation, "test_from_fn", lambda *a, **k: seen.append(k["query_ids"]) or real(*a, **k))
    t = trainer(world, tmp_path, n_test_sample=10, n_test_rank_sample=5)
    t.evaluate("val")
    assert seen[0].tolist() == (MatlabRandom(43).randsample(24, 10) - 1).tolist()  # rng(43); randsample
    assert validation.test_sample(24, 30).tolist() == list(range(24))  # all of them, no draw
    assert not np.array_equal(validation.test_sample(24, 10, "numpy"), seen[0])


def test_options_without_meaning_are_refused(world, tmp_path):
    with pytest.raises(NetVladPortError, match="excludeVeryHard"):
        trainer(world, tmp_path, exclude_very_hard=True)  # deepIBL ignores it; trainWeakly's only
    trainer(world, tmp_path, exclude_very_hard=True, loss="triplet")


def test_fp32_is_exact_on_gpus_and_tf32_opt_in(world, tmp_path, small_spec, small_images):
    from netvlad_port.precision import precision_mode

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    trainer(world, tmp_path)
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    trainer(world, tmp_path, precision="tf32")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    with precision_mode("fp32", torch.device("cpu")):  # extraction's default
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32  # restored
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False


def test_batch_sizes_test0_and_negative_choice(world, tmp_path, monkeypatch):
    t = trainer(world, tmp_path, batch_size=8, test0=True, compute_batch_size=7, n_neg_choice=5)
    assert [len(ids) for ids in t.trunks["train"].groups(7)][:2] == [7, 7]
    seen = []
    real = type(world.train).sample_negs
    monkeypatch.setattr(type(world.train), "sample_negs", lambda self, u, n, r: seen.append(n) or real(self, u, n, r))
    t.run()
    assert t.history.pretrain_val_recall is not None and len(t.history.batch_loss) == 24 // 8
    assert set(seen) == {5}
    assert trainer(world, tmp_path / "b", test0=False).run().history.pretrain_val_recall is None


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_resume_refuses_changed_options_and_extends_with_more_epochs(world, tmp_path):
    out = tmp_path / "run"
    common = ["--dataset", "synthetic", "--root", world.data, "--out", out]
    first = run_cli("train", *common, "--model", world.net, "--epochs", "1", "--pca-dim", "0", "--n-neg-choice", "20")
    assert first.exit_code == 0, first.output
    assert first.output.count("final model") == 1 and "run outputs:" in first.output and "log.jsonl" in first.output
    again = run_cli("train", *common, "--model", world.net, "--epochs", "1")
    assert again.exit_code == 1 and "--resume" in again.output and "--force" in again.output
    changed = run_cli("train", *common, "--resume", "--lr", "0.5", "--momentum", "0")
    assert changed.exit_code == 1
    assert "learning_rate 0.001 -> 0.5" in changed.output and "momentum 0.9 -> 0.0" in changed.output
    more = run_cli("train", *common, "--resume", "--epochs", "2")
    assert more.exit_code == 0, more.output
    batches = [(r["epoch"], r["batch"]) for r in map(json.loads, (out / "log.jsonl").open()) if "loss" in r]
    assert batches == [(e, b) for e in (1, 2) for b in range(1, 7)]
    assert json.loads((out / "summary.json").read_text())["best_epoch"] in (1, 2)
    forced = run_cli("train", *common, "--model", world.net, "--epochs", "1", "--pca-dim", "0", "--force")
    assert forced.exit_code == 0, forced.output
    assert not (out / "epoch_000002").exists()


def test_train_on_any_pair_of_spec_files(world, tmp_path):
    res = run_cli("train", "--train-spec", world.data / "synthetic_train.mat", "--val-spec",
                  world.data / "synthetic_val.mat", "--root", world.data, "--model", world.net, "--out", tmp_path,
                  "--epochs", "1", "--pca-dim", "0", "--n-neg-choice", "20", "--no-test0")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "final").is_dir()


def test_a_trunk_cache_that_does_not_fit_is_refused_with_the_numbers(world, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from netvlad_port.train import trunk

    monkeypatch.setattr(trunk, "_available_bytes", lambda: 1000)  # RAM: 'auto' goes to disk
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 2000, 2000))
    need = 64 * 32 * 3 * 4 * 4 / 1e3  # 40 + 24 images, conv5_1's input: 32 channels x 3 x 4, float32
    with pytest.raises(NetVladPortError, match=rf"64 images need {need:.1f} kB \(disk\).*2\.0 kB free.*--trunk-fp16"):
        trainer(world, tmp_path, trunk_dir=str(tmp_path / "elsewhere"))
    assert (tmp_path / "elsewhere").is_dir()
    with pytest.raises(NetVladPortError, match=r"\(memory\), but the machine has"):
        trainer(world, tmp_path, trunk_cache="memory")
    assert trainer(world, tmp_path, trunk_cache="none").trunks["train"].mode == "none"
