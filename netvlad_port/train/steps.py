"""GCL's training steps (``step_queries`` > 0; [docs/gcl.md](../../docs/gcl.md#training)): an epoch of the
loop becomes one GCL step, a chunk of ``step_queries`` queries with one pair each, drawn afresh
(``MSLSDataSet.load_pairs``, GCL ``src/datasets.py:327-409``; ``train.py:136-192``)."""

from __future__ import annotations

import numpy as np

from ..matlab_random import make_rng
from .step import sample_batch


def step_generator(rng_kind: str, seed: int, step: int, n_queries: int):
    """Step ``step``'s generator: ``rng(seed + step)`` after its first draw, a permutation of the queries
    (which :func:`step_queries` uses when the step starts a walk); the step's pairs and their shuffle
    come next."""
    rng = make_rng(rng_kind, seed + step)
    rng.randperm(n_queries)
    return rng


def step_queries(n_queries: int, step: int, size: int, rng_kind: str, seed: int) -> np.ndarray:
    """The queries of step ``step`` (1-based), in the order their pairs are drawn: the steps walk through a
    permutation of all queries ``size`` at a time (the last chunk of a walk shorter), each chunk sorted
    (``sorted(idcs[start:start + cache_size])``, src/datasets.py:328-335), a new permutation once the
    walk has passed the end (402-404). A walk's permutation is the first draw of its first step's
    generator (:func:`step_generator`)."""
    per_walk = -(-n_queries // size)
    k = (step - 1) % per_walk
    perm = make_rng(rng_kind, seed + step - k).randperm(n_queries) - 1
    return np.sort(perm[k * size : (k + 1) * size])


def step_batches(tuples: list, batch_size: int, rng) -> list[list]:
    """The step's pairs in batches: the queries without a pair left out, the rest shuffled (GCL's
    ``DataLoader(shuffle=True)``, src/factory.py:25; ``randperm`` here) and cut into ``batch_size``, the
    last batch shorter (no ``drop_last``)."""
    real = [t for t in tuples if t is not None]
    order = rng.randperm(len(real)) - 1 if real else np.zeros(0, np.int64)
    shuffled = [real[int(i)] for i in order]
    return [shuffled[k : k + batch_size] for k in range(0, len(shuffled), batch_size)]


def step_plan(trainer, e: int, seed: int) -> list[list]:
    """GCL step ``e``'s batches of pairs for ``trainer``, drawn from rng(seed + e); the run's generator
    continues after them."""
    o, n = trainer.opts, trainer.db_train.num_queries
    rng = step_generator(o.rng, seed, e, n)
    qids = step_queries(n, e, o.step_queries, o.rng, seed)
    tuples = sample_batch(trainer.sampler, trainer._context(rng), qids, trainer.loss, trainer.jitter)
    batches = step_batches(tuples, o.batch_size, rng)
    trainer.rng = rng
    trainer.event({"epoch": e, "step_queries": len(qids), "pairs": sum(map(len, batches))})
    return batches
