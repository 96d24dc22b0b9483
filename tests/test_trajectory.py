"""Whole-run parity: train the port from the start network of a real run of deepIBL's unmodified
trainGaussKernalInd (tests/data/trajectory/gauss_ind_tiny, its README) with the same options and
MATLAB's random draws, and compare every step: query orders, tuples, batch losses, the weights,
momentum, negative cache and RNG state at every checkpoint, recalls and the best epoch."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io

import netvlad_port
from netvlad_port.datasets import load_synthetic
from netvlad_port.matconvnet import read_net
from netvlad_port.train import Trainer, train
from netvlad_port.train import samplers as train_samplers

RUN = Path(__file__).parent / "data" / "trajectory" / "gauss_ind_tiny"
REF = json.loads((RUN / "trajectory.json").read_text())
FEATURES0 = RUN / "init" / "features0"  # the start network's features as MATLAB computed them
# trainGaussKernalInd's arguments (options.json), in our names; pickBestNet without addPCA
OPTIONS = {"learning_rate": 0.001, "n_epoch": 3, "lr_down_freq": 2, "back_prop_to_layer": "conv5_1",
           "n_neg_choice": 12, "comp_feats_frequency": 12, "save_frequency": 12, "compute_batch_size": 10,
           "n_test_sample": 40, "n_test_rank_sample": 10, "pca_dim": 0, "rng": "matlab",
           **{f"{k}_checkpoint0{v}": str(FEATURES0 / f"synthetic_{s}_vd16_conv5_3_vlad_preL2_intra_{k}.bin")
              for k in ("db", "q") for v, s in (("", "train"), ("_val", "val"))}}  # fmt: skip


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module")
def run(tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("trajectory")
    tuples, saves = [], []
    mine = train_samplers.mine_tuple

    def record_tuple(*args, **kwargs):
        t = mine(*args, **kwargs)
        tuples.append(None if t is None else (t.query + 1, t.positive + 1, (t.negatives + 1).tolist()))
        return t

    save = Trainer.save

    def record_save(self, *args, **kwargs):
        state, tensors = self.state_dict()
        weights = {l.name: l.matlab_weights() for l in self.model.layers if l.weight_params()}
        momentum = {l.name: l.matlab_arrays([-self.optimizer.state[p]["momentum_buffer"] for p in l.weight_params()])
                    for l in self.model.layers[self.first:] if l.weight_params()}  # fmt: skip
        saves.append((state["epoch"], state["batch"], weights, momentum, state["neg_cache"], state["rng"]))
        return save(self, *args, **kwargs)

    monkeypatch_module.setattr(train_samplers, "mine_tuple", record_tuple)
    monkeypatch_module.setattr(Trainer, "save", record_save)
    spec = netvlad_port.load_spec(RUN / "init" / "net_initial.mat")
    tr, va = load_synthetic(RUN / "data", "train"), load_synthetic(RUN / "data", "val")
    train(tr, va, spec, out, loss="sare-ind", log=lambda *a: None, **OPTIONS)
    log = [json.loads(line) for line in (out / "log.jsonl").open()]
    summary = json.loads((out / "summary.json").read_text())
    return SimpleNamespace(out=out, spec=spec, tuples=tuples, saves=saves, log=log, summary=summary)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_query_order_and_every_tuple(run):
    ref = [(t["qID"], t["posID"], t["negIDs"]) for b in REF["batches"] for t in b["tuples"]]
    assert len(run.tuples) == len(ref) == 120
    assert [t[0] for t in run.tuples] == [q for b in REF["batches"] for q in b["qIDs"]]
    assert REF["trainOrder"][0][:4] == REF["batches"][0]["qIDs"]
    assert run.tuples == ref


def test_batch_losses(run):
    ours = [(r["epoch"], r["batch"], r["lr"], r["loss"]) for r in run.log if "loss" in r]
    ref = [(b["epoch"], b["batch"], b["lr"], b["loss"]) for b in REF["batches"]]
    assert [o[:3] for o in ours] == [r[:3] for r in ref]
    assert max(abs(o[3] - r[3]) / abs(r[3]) for o, r in zip(ours, ref)) <= 1e-4


def _ref_mid_epoch(epoch: int, batch: int):
    m = scipy.io.loadmat(RUN / "checkpoints" / "mid_epoch" / f"ep{epoch}_before_batch{batch:02d}.mat")
    names = [str(n[0]) for n in m["layer_names"].ravel()]
    cells = {k: dict(zip(names, m[k].ravel())) for k in ("weights", "momentum")}
    weights = {n: [np.asarray(w) for w in c.ravel()] for n, c in cells["weights"].items() if c.size}
    momentum = {n: [np.asarray(w) for w in c.ravel()] for n, c in cells["momentum"].items() if c.size}
    neg_cache = [np.asarray(c, np.int64).ravel().tolist() for c in m["negCache"].ravel()]
    state = np.asarray(m["rngState"][0, 0]["State"][0, 0], np.uint32).ravel()
    return weights, momentum, neg_cache, state


def test_weights_momentum_negative_cache_and_rng_at_every_mid_epoch_checkpoint(run):
    w0 = {l.name: l.weights for l in run.spec.layers}
    checked = 0
    for epoch, batch, weights, momentum, neg_cache, rng in run.saves:
        if batch == 1:
            continue  # the end-of-epoch save, checked below
        ref_w, ref_m, ref_cache, ref_rng = _ref_mid_epoch(epoch, batch)
        for name, ws in ref_w.items():
            for j, r in enumerate(ws):
                ours, r = weights[name][j], r.reshape(weights[name][j].shape)
                base = np.asarray(w0[name][j], np.float64).reshape(r.shape)
                assert rel(ours - base, r - base) <= 1e-3, (epoch, batch, name, j)
                m = momentum[name][j]
                assert rel(m, ref_m[name][j].reshape(m.shape)) <= 1e-3, (epoch, batch, name, j)
        assert [[i + 1 for i in c] for c in neg_cache] == ref_cache, (epoch, batch)
        assert rng["key"] == ref_rng[:624].tolist() and rng["pos"] == ref_rng[624], (epoch, batch)
        checked += 1
    assert checked == 9


@pytest.mark.parametrize("epoch", [1, 2, 3])
def test_weight_change_at_every_epoch_checkpoint(run, epoch):
    ours = netvlad_port.load_spec(run.out / f"epoch_{epoch:06d}")
    ref = read_net(RUN / "checkpoints" / f"tiny_ep{epoch:06d}_latest.mat")
    trained = 0
    for start, o, r in zip(run.spec.layers, ours.layers, ref.layers):
        for w0, a, b in zip(start.weights, o.weights, r.weights):
            w0 = np.asarray(w0, np.float64)
            if np.array_equal(b, w0):
                assert np.array_equal(a, w0), o.name  # frozen in both
                continue
            assert rel(a - w0, b - w0) <= 1e-3, (epoch, o.name)
            trained += 1
    assert trained == 8  # conv5_1..conv5_3 weights and biases, both VLAD tensors


def test_recalls_rank_losses_and_best_epoch(run):
    s = run.summary
    assert s["best_epoch"] == REF["best_epoch"] == 2
    assert s["pretrain_val_recall"] == REF["pretrain"]["val_recall"]
    assert [s["val_recall"][str(e)] for e in (1, 2, 3)] == REF["val_recall_per_epoch"]
    assert max(abs(s["val_rankloss"][str(e)] / REF["val_rankloss"][e - 1] - 1) for e in (1, 2, 3)) <= 1e-4
