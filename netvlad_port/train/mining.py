"""Tuple mining on the cached features (``trainWeakly`` and deepIBL alike;
[docs/matlab.md#mining](../../docs/matlab.md#mining)).

Distances are squared L2 on the cache. Positive: the nearest of the query's non-trivial positives.
Negatives: the per-query cache of ``nNegCache`` plus ``nNegChoice`` random db images beyond
posDistThr; of the ``10 * nNegCap`` nearest candidates the first ``nNegCache`` become the new cache
(regardless of any margin); SARE takes the ``nNegCap`` hardest; the triplet trainer keeps only those
violating d_n < d_p + margin (none: the query is skipped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Tuple:
    query: int
    positive: int
    negatives: np.ndarray
    labels: np.ndarray | None = None  # graded similarity of [positive, *negatives] to the query
    jitter: tuple = (None, False)  # (shorter side, flip) drawn for this tuple


def sq_dists(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    return ((x64 - q64[None]) ** 2).sum(1)


def mine_tuple(
    db,
    iq: int,
    q_feat: np.ndarray,
    db_feats: np.ndarray,
    neg_cache: list,
    rng,
    n_neg_choice: int = 1000,
    n_neg_cap: int = 10,
    n_neg_cache: int = 10,
    margin: float | None = None,
    exclude_very_hard: bool = False,
    l2_margin: float | None = None,
) -> Tuple | None:
    """One query's tuple, or None (no non-trivial positive; triplet: no violating negative).
    Updates ``neg_cache[iq]``. ``exclude_very_hard`` (trainWeakly): drop negatives closer than the positive.
    ``l2_margin`` (NAN's ``pittsburgh.py``, STML's ``--dataloader_margin``): keep the negatives with
    d(q, n) < d(q, p) + l2_margin in plain distances."""
    pos = db.nontrivial_pos_q(iq)
    if len(pos) == 0:
        return None
    dpos = sq_dists(q_feat, db_feats[pos])
    best = int(pos[np.argmin(dpos)])
    d_p = float(dpos.min())
    cand = np.unique(np.concatenate([np.asarray(neg_cache[iq], np.int64), db.sample_negs_q(iq, n_neg_choice, rng)]))
    dn = sq_dists(q_feat, db_feats[cand])
    order = np.argsort(dn, kind="stable")[: min(10 * n_neg_cap, len(cand))]
    cand, dn = cand[order], dn[order]
    neg_cache[iq] = cand[:n_neg_cache].copy()
    if l2_margin is not None:  # NAN / STML: plain distances, d(q, n) < d(q, p) + margin
        keep = np.sqrt(dn) < np.sqrt(d_p) + l2_margin
        cand = cand[keep]
        if len(cand) == 0:
            return None
    elif margin is not None:  # trainWeakly: violators only
        keep = dn < d_p + margin
        if exclude_very_hard:
            keep &= ~(dn < d_p)
        cand = cand[keep]
        if len(cand) == 0:
            return None
    return Tuple(iq, best, cand[:n_neg_cap])
