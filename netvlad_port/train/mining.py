"""Tuple mining on the cached features (``trainWeakly`` and deepIBL alike;
[docs/matlab.md#mining](../../docs/matlab.md#mining)).

Distances are squared L2 on the cache. Positive: the nearest of the query's non-trivial positives.
Negatives: the per-query cache of ``nNegCache`` plus ``nNegChoice`` random db images beyond
posDistThr; of the ``10 * nNegCap`` nearest candidates the first ``nNegCache`` become the new cache
(regardless of any margin); SARE takes the ``nNegCap`` hardest; the triplet trainer keeps only those
violating d_n < d_p + margin (none: the query is skipped). Other rules pass their own ``keep``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# keep(d2_negatives, d2_positive) -> which candidate negatives a rule keeps (squared distances, nearest first)
KeepRule = Callable[[np.ndarray, float], np.ndarray]


@dataclass
class TrainingTuple:
    query: int
    positive: int
    negatives: np.ndarray
    labels: np.ndarray | None = None  # similarity of [positive, *negatives] to the query (losses with labels)
    jitter: tuple = (None, False)  # (shorter side, flip) drawn for this tuple


def sq_dists(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    return ((x64 - q64[None]) ** 2).sum(1)


def violators(margin: float, exclude_very_hard: bool = False) -> KeepRule:
    """trainWeakly's rule: d_n < d_p + margin (squared); ``excludeVeryHard`` also drops d_n < d_p."""

    def keep(dn: np.ndarray, d_p: float) -> np.ndarray:
        k = dn < d_p + margin
        return k & ~(dn < d_p) if exclude_very_hard else k

    return keep


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
    keep: KeepRule | None = None,
) -> TrainingTuple | None:
    """One query's tuple, or None (no non-trivial positive; a ``keep`` rule that keeps nothing).
    Updates ``neg_cache[iq]``. ``margin``: trainWeakly's violators (:func:`violators`); ``keep``: any
    other rule on the candidates' squared distances."""
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
    if keep is None and margin is not None:
        keep = violators(margin, exclude_very_hard)
    if keep is not None:
        cand = cand[keep(dn, d_p)]
        if len(cand) == 0:
            return None
    return TrainingTuple(iq, best, cand[:n_neg_cap])
