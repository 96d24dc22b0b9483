"""GCL's pair sampler ([docs/gcl.md](../../../docs/gcl.md#pair-sampling)), after GCL ``src/datasets.py``
(``MSLSDataSet.load_pairs``, lines 327-409): no mining, a partner drawn from a similarity bucket of the
query's own city."""

from __future__ import annotations

import weakref

import numpy as np

from ...retrieval import search_groups
from ...train.mining import TrainingTuple
from ...train.samplers import MiningContext, SamplerEntry, register_sampler

PAIR_FRACTIONS = (0.5, 0.25, 0.25)  # GCL src/datasets.py:377: psi >= 0.5, 0 < psi < 0.5, psi = 0
_MEMBERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # db -> (q_group, {group: db ids})


def city_members(db, iq: int) -> np.ndarray:
    """The database images a query's partner may come from: those of its city (``search_groups``, GCL
    reads one ``<city>_gt.h5`` row per query, src/datasets.py:375), every image when the dataset has no
    groups."""
    if db not in _MEMBERS:
        groups = search_groups(db)
        if groups is None:
            _MEMBERS[db] = (None, np.arange(db.num_images))
        else:
            db_group, q_group = groups
            order = np.argsort(db_group, kind="stable")
            keys, starts = np.unique(db_group[order], return_index=True)
            parts = np.split(order, starts[1:])
            _MEMBERS[db] = (q_group, {int(k): np.sort(p) for k, p in zip(keys, parts)})
    q_group, members = _MEMBERS[db]
    if q_group is None:
        return members
    return members.get(int(q_group[iq]), np.zeros(0, np.int64))


def sample_pair(db, iq: int, rng, kind: str = "graded", fractions=PAIR_FRACTIONS) -> TrainingTuple | None:
    """GCL's pair sampler, no mining (src/datasets.py:374-395): a bucket drawn by ``rand`` -- graded:
    psi >= 0.5, 0 < psi < 0.5, psi = 0 with ``fractions``; binary: a positive or not, half and half --
    then a partner uniform in it (``randsample``) among the query's city's database images. An empty
    bucket drops the query for this step, without a redraw, as the original does."""
    ids = city_members(db, iq)
    psi = db.similarity(iq, ids, kind)
    u = float(rng.rand()[0, 0])
    if kind == "binary":
        members = np.flatnonzero(psi == 1 if u < 0.5 else psi == 0)
    else:
        bucket = int(np.searchsorted(np.cumsum(fractions), u, side="right"))
        members = np.flatnonzero([psi >= 0.5, (psi > 0) & (psi < 0.5), psi == 0][min(bucket, 2)])
    if len(members) == 0:
        return None
    k = int(members[int(rng.randsample(len(members), 1)[0]) - 1])
    return TrainingTuple(iq, int(ids[k]), np.zeros(0, np.int64), np.array([psi[k]], np.float32))


def _sample(ctx: MiningContext, iq: int) -> TrainingTuple | None:
    return sample_pair(ctx.db, iq, ctx.rng, ctx.loss.labels or "graded")


register_sampler(SamplerEntry("pairs", _sample, uses_cache=False, doc="GCL's pairs: 50/25/25 by graded similarity"))
