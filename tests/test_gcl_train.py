"""GCL's training as train.py runs it (issue 21): pairs from the query's own city, the schedule of
10,000-query steps, the batch of mini-batches of 2 pairs with separate query / partner forwards."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netvlad_port.matlab_random import make_rng
from netvlad_port.train import Trainer, TrainOptions
from netvlad_port.train.loop import TRAIN_SEED
from netvlad_port.train.steps import step_plan

CITIES = ("trondheim", "london", "boston")


@pytest.fixture(scope="module")
def three_cities(tmp_path_factory):
    """Three MSLS train cities on the same coordinates and headings: a sampler that ignores cities
    finds partners of every bucket in the other two."""
    from netvlad_port.plugins.gcl.msls import DbMsls, write_msls_city

    root = tmp_path_factory.mktemp("msls3")
    east = [(500000.0 + 4.0 * i, 4000000.0) for i in range(60)]  # 0..236 m: psi from 1 down to 0
    for city in CITIES:
        write_msls_city(root, city, "database", [f"{city}d{i}" for i in range(60)], east, [0.0] * 60, [0] * 60)
        write_msls_city(root, city, "query", [f"{city}q{i}" for i in range(3)], [east[2], east[20], east[40]],
                        [0.0] * 3, [0] * 3)  # fmt: skip
    return DbMsls(root, "train")


def test_pairs_never_cross_cities_and_the_fractions_hold(three_cities):
    from netvlad_port.plugins.gcl.sampler import sample_pair

    db = three_cities
    rng = make_rng("matlab", 3)
    psi = {iq: [] for iq in range(db.num_queries)}
    for _ in range(1500):
        for iq in range(db.num_queries):
            t = sample_pair(db, iq, rng)
            assert t is not None  # every bucket is filled in each city
            assert db.db_city[t.positive] == db.q_city[iq]
            assert t.labels[0] == db.similarity(iq, [t.positive], "graded")[0]
            psi[iq].append(t.labels[0])
    for got in psi.values():  # each query: 1500 draws
        got, n = np.array(got), len(got)
        for frac, hit in ((0.5, got >= 0.5), (0.25, (got > 0) & (got < 0.5)), (0.25, got == 0)):
            assert abs(hit.mean() - frac) < 4 * np.sqrt(frac * (1 - frac) / n)
    # brute force: the partners of one query are exactly the draws from its own city's buckets
    city = np.flatnonzero(db.db_city == db.q_city[4])
    drawn = {sample_pair(db, 4, rng).positive for _ in range(3000)}
    assert drawn == set(city.tolist())


def gcl_walk(n: int, size: int, steps: int, kind: str, seed: int = 42) -> list[np.ndarray]:
    """GCL's MSLSDataSet.load_pairs pointer, written out: a permutation when start is 0, the sorted chunk
    idcs[start:start+size], start += size, back to 0 once start >= total."""
    out, start, idcs = [], 0, None
    for step in range(1, steps + 1):
        if start == 0:
            idcs = make_rng(kind, seed + step).randperm(n) - 1
        out.append(np.array(sorted(idcs[start : start + size].tolist())))
        start += size
        if start >= n:
            start = 0
    return out


@pytest.mark.parametrize("kind", ["matlab", "numpy"])
def test_step_queries_walk_a_permutation_as_gcl_does(kind):
    from netvlad_port.train.steps import step_queries

    for n, size in ((23, 5), (20, 5), (7, 10)):
        expected = gcl_walk(n, size, 13, kind)
        got = [step_queries(n, s, size, kind, 42) for s in range(1, 14)]
        assert all(np.array_equal(a, b) for a, b in zip(got, expected)), (n, size)
    walk = np.concatenate(gcl_walk(23, 5, 5, kind))
    assert sorted(walk.tolist()) == list(range(23))  # a walk covers every query once


def _opts(**kw) -> TrainOptions:
    return TrainOptions(**{
        **{"loss": "gcl", "learning_rate": 0.1, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 4,
           "lr_down_freq": 2, "lr_down_factor": 10, "back_prop_to_layer": "conv5_1", "n_epoch": 3,
           "step_queries": 10, "test0": False, "pca_dim": 0, "save_frequency": 8},
        **kw,
    })  # fmt: skip


def _trainer(world, out, **kw) -> Trainer:
    from netvlad_port.datasets import load_synthetic
    from netvlad_port.fixtures import make_net

    spec = make_net("vd16", "preL2_gem", width=1 / 16, pca_dim=None, seed=4)
    train, val = load_synthetic(world.data, "train"), load_synthetic(world.data, "val")
    return Trainer(spec, train, val, _opts(**kw), out, log=lambda *a: None)


def test_a_step_draws_its_pairs_in_gcls_order(tiny_world, tmp_path):
    """The step's pairs: the sorted chunk's queries in order, one draw each from the step's generator,
    the queries without a partner left out, the rest shuffled into batches of 4 (the last shorter)."""
    from netvlad_port.plugins.gcl.sampler import sample_pair

    t = _trainer(tiny_world, tmp_path)
    n = t.db_train.num_queries
    for e in (1, 2, 3, 4):
        rng = make_rng("matlab", 42 + e)
        rng.randperm(n)
        pairs = [p for iq in gcl_walk(n, 10, e, "matlab")[-1] if (p := sample_pair(t.db_train, int(iq), rng))]
        order = rng.randperm(len(pairs)) - 1
        expected = [(pairs[i].query, pairs[i].positive, float(pairs[i].labels[0])) for i in order]
        batches = step_plan(t, e, TRAIN_SEED)
        got = [(p.query, p.positive, float(p.labels[0])) for b in batches for p in b]
        assert got == expected and [len(b) for b in batches][:-1] == [4] * (len(batches) - 1)


def test_validation_after_every_step_on_every_query_and_the_lr_schedule(tiny_world, tmp_path, monkeypatch):
    from netvlad_port.train import validation

    calls = []
    real = validation.test_from_fn

    def spy(db, db_feats, q_feats, **kw):
        calls.append((db.name, len(kw["query_ids"]), kw["protocol"]))
        return real(db, db_feats, q_feats, **kw)

    monkeypatch.setattr(validation, "test_from_fn", spy)
    t = _trainer(tiny_world, tmp_path, n_epoch=5, n_test_sample=5).run()
    n_val = t.db_val.num_queries
    assert calls == [(t.db_val.name, n_val, "matlab")] * 5  # every val query, after each of the 5 steps
    assert sorted(t.history.val_recall) == [1, 2, 3, 4, 5] and not t.history.train_recall
    # torch's StepLR(step_size=2, gamma=0.1), stepped after each step as train.py:129,191 does
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    expected = []
    for _ in range(5):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    lrs = {r["epoch"]: r["lr"] for r in records if "batch" in r}
    assert [lrs[e] for e in range(1, 6)] == pytest.approx(expected, rel=1e-12)
    steps = {r["epoch"]: r for r in records if "pairs" in r}
    assert [steps[e]["step_queries"] for e in range(1, 6)] == [10, 10, 4, 10, 10]


def test_a_resumed_step_run_equals_an_uninterrupted_one(tiny_world, tmp_path):
    whole = _trainer(tiny_world, tmp_path / "a", forward="siamese").run()
    part = _trainer(tiny_world, tmp_path / "b", forward="siamese")
    part.run(stop_after=4)  # inside step 2 (two checkpoints a step: save_frequency 8 = 2 batches)
    assert (part.epoch, part.batch) == (2, 2)
    resumed = Trainer.resume(tmp_path / "b", part.db_train, part.db_val, log=lambda *a: None).run()
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert whole.history.val_recall == resumed.history.val_recall


def _bn_net():
    """GCL's ResNet18-GeM layout (torchvision's init; width is VGG-only): BatchNorm everywhere, all trained."""
    from netvlad_port.model import SimpleNN
    from netvlad_port.plugins.gcl.importer import gcl_network

    torch.manual_seed(0)
    return SimpleNN(gcl_network("resnet18")).double()


class Bank:
    """Step's inputs: image rows of a fixed random bank (db images, then queries)."""

    device = torch.device("cpu")

    def __init__(self, n: int):
        self.x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def __call__(self, ids, shorter=None, flip=False):
        return self.x[list(ids)]


def _gcl_reference(model, bank, db_n, tuples, lr: float, margin: float = 0.5):
    """GCL train.py:139-167 by hand: mini-batches of 2, queries and partners through separate forwards,
    each mini-batch's mean loss / floor(B / 2) back-propagated, one SGD step."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    im0 = bank.x[[db_n + t.query for t in tuples]]
    im1 = bank.x[[t.positive for t in tuples]]
    label = torch.tensor([float(t.labels[0]) for t in tuples], dtype=torch.float64)
    accum = len(tuples) // 2
    for j in range(accum):
        a, b = 2 * j, 2 * j + 2
        x0 = model.run(im0[a:b]).flatten(1)
        x1 = model.run(im1[a:b]).flatten(1)
        d = F.pairwise_distance(x0, x1, p=2)
        err = label[a:b] * 0.5 * d.pow(2) + (1 - label[a:b]) * 0.5 * (margin - d).clamp(min=0).pow(2)
        (err.mean() / accum).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    return grads


@pytest.mark.parametrize("n_pairs", [7])  # odd: the last pair is dropped
def test_siamese_batch_equals_gcls_loop(n_pairs):
    from netvlad_port.losses import LOSSES
    from netvlad_port.train.mining import TrainingTuple
    from netvlad_port.train.step import Step

    model, db_n = _bn_net(), 12
    ref = copy.deepcopy(model)
    bank = Bank(db_n + n_pairs)
    psi = np.random.default_rng(0).choice([0.0, 0.3, 0.7, 1.0], n_pairs)
    tuples = [TrainingTuple(k, (3 * k) % db_n, np.zeros(0, np.int64), np.array([psi[k]], np.float32))
              for k in range(n_pairs)]  # fmt: skip
    params = list(model.parameters())
    step = Step(model, 0, params, torch.optim.SGD(params, lr=0.1), LOSSES["gcl"], {}, [], bank, "fp32",
                forward="siamese")  # fmt: skip
    counted = []
    hook = model.layers[0].register_forward_pre_hook(lambda m, a: counted.append(a[0].shape[0]))

    class Db:
        num_images = db_n

    step(Db, tuples, np.zeros(n_pairs, bool))
    hook.remove()
    assert counted == [2] * (2 * (n_pairs // 2))  # 2 forwards of 2 per mini-batch; 2 * floor(B / 2) pairs used
    expected = _gcl_reference(ref, bank, db_n, tuples, 0.1)
    for p, g in zip(params, expected):
        assert torch.allclose(p.grad, g, rtol=1e-9, atol=1e-12)
    for (name, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-12), name  # weights and BN statistics
    # the per-tuple forward puts query and partner in one pass: BatchNorm sees other batches
    other = copy.deepcopy(ref)
    Step(other, 0, list(other.parameters()), torch.optim.SGD(other.parameters(), lr=0.1), LOSSES["gcl"], {}, [],
         bank, "fp32")(Db, tuples, np.zeros(n_pairs, bool))  # fmt: skip
    bn = [k for k in model.state_dict() if k.endswith("running_mean")]
    assert not all(torch.allclose(model.state_dict()[k], other.state_dict()[k]) for k in bn)


def test_the_gcl_recipe_is_train_pys():
    from netvlad_port.train.recipes import recipe_options

    o = TrainOptions.from_recipe("gcl")
    assert (o.learning_rate, o.momentum, o.weight_decay, o.batch_size) == (0.1, 0.0, 0.0, 32)  # train.py:30,46,128
    assert (o.lr_down_freq, o.lr_down_factor, o.n_epoch, o.step_queries) == (25, 10, 52, 10_000)  # 44,47-48
    assert (o.back_prop_to_layer, o.forward, o.select_by, o.val_protocol) == ("backbone", "siamese", 5, "gcl")
    assert recipe_options("gcl").get("loss_params", {}).get("margin", 0.5) == 0.5  # train.py:45


@pytest.mark.parametrize(
    "options, words",
    [
        ({"step_queries": -1}, "--step-queries"),
        ({"step_queries": 10, "loss": "triplet"}, "--step-queries"),
        ({"forward": "pairs"}, "--forward"),
        ({"forward": "siamese", "loss": "triplet"}, "--forward siamese"),
        ({"forward": "batch", "jitter_flip": True}, "--jitter"),
        ({"select_by": 7}, "--select-by 7"),
        ({"val_protocol": "nope"}, "--val-protocol"),
    ],
)
def test_bad_schedule_options_are_one_line(options, words):
    from netvlad_port.errors import NetVladPortError

    with pytest.raises(NetVladPortError) as exc:
        TrainOptions(**{"loss": "gcl", **options}).objective()
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_gcl_steps_train_through_the_cli(tiny_world, tmp_path):
    from click.testing import CliRunner

    from netvlad_port.cli import main

    res = CliRunner().invoke(main, ["train", str(tiny_world.net), "--dataset", "synthetic", "--root",
                                    str(tiny_world.data), "--loss", "gcl", "--out", str(tmp_path), "--epochs", "2",
                                    "--pca-dim", "0", "--step-queries", "10", "--forward", "siamese",
                                    "--batch-size", "4", "--val-protocol", "gcl", "--select-by", "1", "--no-test0",
                                    "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["select_by"], summary["step_queries"], summary["val_protocol"]) == (1, 10, "gcl")
    r1 = {int(e): r[0] for e, r in summary["val_recall"].items()}
    assert sorted(r1) == [1, 2] and r1[summary["best_epoch"]] == max(r1.values())
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    pairs = {r["epoch"]: r["pairs"] for r in records if "pairs" in r}
    batches = [r for r in records if "batch" in r]
    assert len(batches) == sum(-(-p // 4) for p in pairs.values())  # ceil(pairs / 4) batches a step
