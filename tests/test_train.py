"""Training (docs/matlab.md#training-loop): mining semantics on crafted geometry, the schedule, resume after an
interruption and a real kill, the frozen-trunk cache, multi-process equivalence."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from netvlad_port.datasets import DbBase
from netvlad_port.train import History, Trainer, TrainOptions, pick_best_epoch
from netvlad_port.train.mining import mine_tuple

from helpers import E0, line, spec_fields


def crafted():
    """Query at 0 m; db at 0.5 (trivial), 4, 8 (positives), 20 (within 25 m) and 30..200 m (negatives)."""
    east = [0.5, 4, 8, 20] + list(range(30, 210, 10))
    return DbBase("c", ".", ".", spec_fields(line(*east), line(0)))


def test_mining_positive_negatives_and_cache():
    db = crafted()
    n = db.num_images
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    q = feats[0] * 1.0  # identical to the 0.5 m image: must not be chosen (trivial)
    feats[2] = q + 0.5  # 8 m: closer in feature space than 4 m
    feats[1] = q + 3.0
    cache = [np.zeros(0, np.int64)]
    t = mine_tuple(db, 0, q, feats, cache, rng, n_neg_choice=5, n_neg_cap=3, n_neg_cache=4)
    assert t.positive == 2
    assert (np.abs(db.utm_db[0, t.negatives] - E0) > 25).all() and len(t.negatives) == 3
    d = ((feats[t.negatives] - q) ** 2).sum(1)
    assert (np.diff(d) >= 0).all()  # hardest first
    assert len(cache[0]) == 4 and set(t.negatives) <= set(cache[0])
    # the cache is merged with a fresh random sample: a cached hard negative stays a candidate
    hard = 20
    feats[hard] = q + 0.01
    cache[0] = np.array([hard])
    t2 = mine_tuple(db, 0, q, feats, cache, np.random.default_rng(5), n_neg_choice=1, n_neg_cap=2, n_neg_cache=2)
    assert t2.negatives[0] == hard and cache[0][0] == hard


def test_triplet_violation_filter():
    db = crafted()
    feats = np.zeros((db.num_images, 2), np.float32)
    feats[:, 0] = np.arange(db.num_images)  # far apart in feature space
    q = feats[2].copy()  # positive 8 m: d_p = 0
    cache = [np.zeros(0, np.int64)]
    none = mine_tuple(db, 0, q, feats, cache, np.random.default_rng(0), 50, 10, 10, margin=0.1)
    assert none is None and len(cache[0]) == 10  # no violator: skipped, but the cache is updated
    feats[10] = q + [0.2, 0]  # d_n = 0.04 < d_p + 0.1
    t = mine_tuple(db, 0, q, feats, cache, np.random.default_rng(0), 50, 10, 10, margin=0.1)
    assert t.negatives.tolist() == [10]
    feats[2] = q + [0.3, 0]  # now d_p = 0.09 > d_n: negative 10 is "very hard"
    kept = mine_tuple(db, 0, q, feats, cache, np.random.default_rng(0), 50, 10, 10, margin=0.1)
    assert 10 in kept.negatives.tolist()
    vh = mine_tuple(db, 0, q, feats, cache, np.random.default_rng(0), 50, 10, 10, margin=0.1, exclude_very_hard=True)
    assert vh is None or 10 not in vh.negatives.tolist()


def test_pick_best_epoch_ties():
    ns = [1, 2, 3, 4, 5, 10]
    h = History(
        val_recall={
            1: [0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
            2: [0.6, 0.6, 0.7, 0.8, 0.9, 0.95],
            3: [0.4, 0.6, 0.7, 0.85, 0.9, 0.95],
            4: [0.9, 0.9, 0.9, 0.9, 0.89, 1.0],
        }
    )
    assert pick_best_epoch(h, ns) == 3  # recall@5 ties; recall@4 decides


@pytest.fixture(scope="module")
def setup(tiny_world):
    from netvlad_port.datasets import load_synthetic

    w = tiny_world
    return w.root, load_synthetic(w.data, "train"), load_synthetic(w.data, "val"), w.spec


OPTS = {
    "n_epoch": 2,
    "learning_rate": 0.01,
    "back_prop_to_layer": "conv5_1",
    "n_neg_choice": 20,
    "save_frequency": 4,
    "comp_feats_frequency": 8,
    "test0": False,
}


def test_schedule_and_objective(setup, tmp_path):
    _, tr, va, spec = setup
    t = Trainer(
        spec, tr, va, TrainOptions.create(**{**OPTS, "n_epoch": 6, "lr_down_freq": 2}), tmp_path, log=lambda *a: None
    )
    refreshes = []
    real = t.refresh_train_cache
    t.refresh_train_cache = lambda: (refreshes.append((t.epoch, t.batch)), real())[1]
    t.run()
    nb = tr.num_queries // 4  # 6 batches per epoch; refresh every 8 queries = 2 batches, never at batch 1 or 6
    end = nb + 1  # the refresh at epoch end
    assert refreshes == [
        (1, 1),  # the initial (off-the-shelf) cache
        (1, 2),
        (1, 4),
        (1, end),
        (2, 2),
        (2, 4),
        (2, end),
        (3, 4),
        (3, end),
        (4, 4),
        (4, end),  # lr halved at epoch 3: interval 4 batches
        (5, end),
        (6, end),
    ]  # halved again at epoch 5: 8 > 6 batches
    assert t.lr == pytest.approx(0.01 / 4) and t.comp_freq == 8  # halved at epochs 3 and 5, interval doubled
    assert sorted(t.history.val_recall) == [1, 2, 3, 4, 5, 6] and len(t.history.batch_loss) == 6 * nb
    assert all(np.isfinite(t.history.batch_loss))


def test_trunk_cache_gives_the_same_training(setup, tmp_path):
    _, tr, va, spec = setup
    runs = []
    for mode in ("memory", "disk", "none"):
        t = Trainer(
            spec,
            tr,
            None,
            TrainOptions.create(**{**OPTS, "n_epoch": 1, "trunk_cache": mode}),
            tmp_path / mode,
            log=lambda *a: None,
        )
        runs.append(t.run().history.batch_loss)
    assert np.allclose(runs[0], runs[1], rtol=1e-6) and np.allclose(runs[0], runs[2], rtol=1e-4)


@pytest.mark.parametrize("loss", ["sare-ind", "gcl"])  # mined tuples; GCL's sampled pairs
def test_resume_gives_the_same_next_steps(setup, tmp_path, loss):
    _, tr, va, spec = setup
    opts = {**OPTS, "loss": loss}
    full = Trainer(spec, tr, va, TrainOptions.create(**opts), tmp_path / "full", log=lambda *a: None).run()
    part = Trainer(spec, tr, va, TrainOptions.create(**opts), tmp_path / "part", log=lambda *a: None)
    part.run(stop_after=5)  # checkpoint written at the start of batch 6
    del part
    resumed = Trainer.resume(tmp_path / "part", tr, va, log=lambda *a: None).run()
    assert np.allclose(resumed.history.batch_loss, full.history.batch_loss, rtol=1e-6, atol=1e-9)
    for p, q in zip(resumed.model.parameters(), full.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)


def test_kill_a_real_training_process_and_resume(setup, tmp_path):
    root, tr, va, _ = setup
    args = [
        sys.executable,
        "-m",
        "netvlad_port.cli",
        "train",
        "--dataset",
        "synthetic",
        "--root",
        str(root / "data"),
        "--model",
        str(root / "offtheshelf.mat"),
        "--epochs",
        "3",
        "--lr",
        "0.01",
        "--n-neg-choice",
        "20",
        "--save-frequency",
        "4",
        "--comp-feats-frequency",
        "8",
        "--pca-dim",
        "8",
    ]
    ref = subprocess.run(args + ["--out", str(tmp_path / "ref")], capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        args + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    state = out / "checkpoint_latest" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 2:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed, "the run finished before it could be killed"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "netvlad_port.cli",
            "train",
            "--dataset",
            "synthetic",
            "--root",
            str(root / "data"),
            "--out",
            str(out),
            "--resume",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]

    def losses(d):
        return {(r["epoch"], r["batch"]): r["loss"] for r in map(json.loads, (d / "log.jsonl").open()) if "batch" in r}

    a, b = losses(tmp_path / "ref"), losses(out)
    assert a.keys() == b.keys()
    assert all(abs(a[k] - b[k]) <= 1e-6 * max(1, abs(a[k])) for k in a)
    import netvlad_port

    x = torch.rand(1, 3, 48, 64) * 255
    with torch.no_grad():
        assert torch.allclose(
            netvlad_port.load(tmp_path / "ref" / "final")(x), netvlad_port.load(out / "final")(x), atol=1e-5
        )


def _ddp_worker(rank, world, root, spec_path, out, port, extra):
    import torch.distributed as dist

    from netvlad_port import load_spec
    from netvlad_port.datasets.synthetic import load_synthetic
    from netvlad_port.networks import insert_attention

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    spec = load_spec(spec_path)
    t = Trainer(
        insert_attention(spec, extra["attention"]) if extra else spec,
        load_synthetic(root, "train"),
        None,
        TrainOptions.create(**{**OPTS, "n_epoch": 1, **extra}),
        out,
        log=lambda *a: None,
    )
    t.run(stop_after=3)
    if rank == 0:
        from safetensors.torch import save_file

        save_file({n: p.detach().contiguous() for n, p in t.model.named_parameters()}, str(out / "weights.safetensors"))
    dist.barrier()  # neither rank tears the group down while the other still uses it
    dist.destroy_process_group()


def test_stml_mining_cache_leaves_the_attention_modules_out(setup, tmp_path):
    """STML's cache is ``model.pool(model.encoder(x))`` (tasks/train.py:255-256): with its sampler the train
    cache is the network without its attention modules; MATLAB's samplers cache the whole network."""
    from netvlad_port.networks import insert_attention

    _, tr, _, spec = setup

    def cache(net, **extra):
        t = Trainer(net, tr, None, TrainOptions.create(**{**OPTS, **extra}), tmp_path / str(len(extra)),
                    log=lambda *a: None)  # fmt: skip
        t.refresh_train_cache()
        return t.train_feats

    with_se = insert_attention(spec, ("se",))
    plain = cache(spec)
    np.testing.assert_allclose(cache(with_se, loss="stml", attention=("se",)), plain, atol=1e-6)
    assert np.abs(cache(with_se, attention=("se",), loss="triplet") - plain).max() > 1e-3


@pytest.mark.parametrize("attention", [False, True])  # with: BatchNorm modules in train mode (docs/stml.md)
def test_two_processes_make_the_single_process_update(setup, tmp_path, attention):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    from netvlad_port.networks import insert_attention

    root, tr, _, spec = setup
    extra = {"attention": ("cbam", "se"), "loss": "stml"} if attention else {}
    if attention:
        spec = insert_attention(spec, extra["attention"])
    single = Trainer(spec, tr, None, TrainOptions.create(**{**OPTS, "n_epoch": 1, **extra}), tmp_path / "one",
                     log=lambda *a: None)  # fmt: skip
    single.run(stop_after=3)
    (tmp_path / "two").mkdir()
    import socket

    with socket.socket() as sock:  # a free port on loopback for the gloo rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(
        _ddp_worker,
        args=(2, str(root / "data"), str(root / "offtheshelf.mat"), tmp_path / "two", port, extra),
        nprocs=2,
        join=True,
    )
    two = load_file(str(tmp_path / "two" / "weights.safetensors"))
    for n, p in single.model.named_parameters():
        assert torch.allclose(p, two[n], rtol=1e-5, atol=1e-7), n
    moved = sum(
        (p - q).abs().sum().item()
        for (_, p), q in zip(
            single.model.named_parameters(),
            Trainer(
                spec, tr, None, TrainOptions.create(**OPTS), tmp_path / "x", log=lambda *a: None
            ).model.parameters(),
        )
    )
    assert moved > 0  # the update did something


def test_tensorboard_scalars_and_jsonl_log(setup, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, tr, va, spec = setup
    t = Trainer(spec, tr, va, TrainOptions.create(**{**OPTS, "n_epoch": 1}), tmp_path, log=lambda *a: None).run()
    t.events.tb.flush()
    ea = EventAccumulator(str(tmp_path / "tensorboard"))
    ea.Reload()
    assert {"loss", "lr", "val_recall@1", "val_recall@5"} <= set(ea.Tags()["scalars"])
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
    assert sum("loss" in r for r in records) == tr.num_queries // 4 and any("val_recall@1" in r for r in records)


def test_jitter_and_mixed_precision_options_run(setup, tmp_path):
    _, tr, _, spec = setup
    t = Trainer(
        spec,
        tr,
        None,
        TrainOptions(
            **{
                **OPTS,
                "n_epoch": 1,
                "jitter_flip": True,
                "jitter_scale": (0.9, 1.1),
                "precision": "bf16",
                "loss": "triplet",
                "exclude_very_hard": True,
            }
        ),
        tmp_path,
        log=lambda *a: None,
    )
    t.run(stop_after=3)
    assert len(t.history.batch_loss) == 3 and all(np.isfinite(t.history.batch_loss))


@pytest.mark.parametrize(
    "loss", ["sare-ind", "sare-joint", "cauchy-ind", "cauchy-joint", "exp-ind", "exp-joint", "triplet"]
)
def test_every_loss_trains_to_a_final_model(setup, tmp_path, loss):
    import netvlad_port
    from netvlad_port.train import train

    _, tr, va, spec = setup
    final = train(
        tr, va, spec, tmp_path, loss=loss, log=lambda *a: None, pca_dim=8, **{**OPTS, "n_epoch": 1, "test0": True}
    )
    model = netvlad_port.load(final)
    assert model.output_dim == 8 and model.names[-2:] == ["WPCA", "finalL2"]
    from PIL import Image

    with Image.open(tmp_path / "recall_per_epoch.png") as im:
        im.verify()
