"""Validation during training: MATLAB's ``testNet`` (``testCore`` recall on ``nTestSample`` queries and
``testCoreRank``) and ``getBestEpoch`` ([docs/matlab.md#training-loop](../../docs/matlab.md#training-loop))."""

from __future__ import annotations

import numpy as np

from ..errors import NetVladPortError
from ..matlab_random import make_rng
from ..retrieval import test_from_fn
from .mining import sq_dists

TEST_SEED = 43


def test_sample(n_queries: int, n_sample: int, rng: str = "matlab") -> np.ndarray:
    """``rng(43); randsample(nQueries, nSample)`` (0-based) when there are more queries, else all
    (``recallAtN``, ``testCoreRank``)."""
    if n_sample >= n_queries:
        return np.arange(n_queries)
    return make_rng(rng, TEST_SEED).randsample(n_queries, n_sample) - 1


test_sample.__test__ = False  # not a pytest test


def rank_loss(db, db_feats, q_feats, opts, margin: float) -> float:
    """``testCoreRank``, a diagnostic: over ``nTestRankSample`` queries with a non-trivial positive, the
    mean over ``nNegChoice`` random negatives of max(0, d^2_pos + margin - d^2_neg), d^2_pos the nearest
    non-trivial positive; the negatives drawn after a second ``rng(43)``."""
    qids = test_sample(db.num_queries, opts.n_test_rank_sample, opts.rng)
    rng = make_rng(opts.rng, TEST_SEED)
    vals = []
    for iq in qids:
        pos = db.nontrivial_pos_q(iq)
        if len(pos) == 0:
            continue
        negs = db.sample_negs_q(iq, opts.n_neg_choice, rng)
        d_p = sq_dists(q_feats[iq], db_feats[pos]).min()
        if len(negs):
            vals.append(np.maximum(0, d_p + margin - sq_dists(q_feats[iq], db_feats[negs])).mean())
    return float(np.mean(vals)) if vals else float("nan")


def evaluate(db, feats: np.ndarray, opts, margin: float) -> tuple[list[float], float]:
    """``testNet``: (recall@recallNs on the ``nTestSample`` subset, rank loss) of every image's features
    (db rows, then queries), under ``val_protocol``. With ``step_queries`` (GCL's steps) on every query,
    as GCL validates on all of MSLS-val (train.py:65-81)."""
    n_db = db.num_images
    if opts.step_queries:
        qids = np.arange(db.num_queries)
    else:
        qids = test_sample(db.num_queries, opts.n_test_sample, opts.rng)
    res = test_from_fn(db, feats[:n_db], feats[n_db:][qids], recall_ns=opts.recall_ns, query_ids=qids,
                       protocol=opts.val_protocol)  # fmt: skip
    return res.recalls, rank_loss(db, feats[:n_db], feats[n_db:], opts, margin)


def pick_best_epoch(history, recall_ns, select_by: int = 5) -> int:
    """``getBestEpoch``: max val recall@5; ties (|diff| < 1e-6) by recall@4, 3, 2, 1, then 10, 15, ...
    ``select_by`` N != 5: max recall@N first (STML: N = 1, tasks/train.py:199), ties as getBestEpoch."""
    ns = list(recall_ns)
    if select_by not in ns:
        raise NetVladPortError(f"select_by {select_by}: not one of recallNs ({','.join(map(str, ns))})")
    order = [select_by] + [n for n in [5, 4, 3, 2, 1] + [n for n in ns if n > 5] if n != select_by]
    keys = [ns.index(n) for n in order if n in ns]
    best = None
    for e in sorted(history.val_recall):
        r = history.val_recall[e]
        if best is None:
            best = e
            continue
        rb = history.val_recall[best]
        for k in keys:
            if abs(r[k] - rb[k]) >= 1e-6:
                if r[k] > rb[k]:
                    best = e
                break
    if best is None:
        raise NetVladPortError("no epoch has a validation recall (epochTestFrequency must be 1)")
    return best


def recall_text(recalls, recall_ns) -> str:
    """recall@1/5/10 in percent, as the log lines print them."""
    ns = list(recall_ns)
    return " ".join(f"{recalls[ns.index(n)] * 100:.1f}" for n in (1, 5, 10) if n in ns)
