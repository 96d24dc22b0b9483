"""GCL's pair sampler ([docs/gcl.md](../../../docs/gcl.md#pair-sampling)), after GCL ``src/datasets.py``
(``MSLSDataSet``'s pairs, lines 374-395): no mining, a partner drawn from a similarity bucket."""

from __future__ import annotations

import numpy as np

from ...train.mining import TrainingTuple
from ...train.samplers import MiningContext, SamplerEntry, register_sampler

PAIR_FRACTIONS = (0.5, 0.25, 0.25)  # GCL src/datasets.py:377: psi >= 0.5, 0 < psi < 0.5, psi = 0


def sample_pair(db, iq: int, rng, kind: str = "graded", fractions=PAIR_FRACTIONS) -> TrainingTuple | None:
    """GCL's pair sampler, no mining (src/datasets.py:374-395): a bucket drawn by ``rand`` -- graded:
    psi >= 0.5, 0 < psi < 0.5, psi = 0 with ``fractions``; binary: a positive or not, half and half --
    then a partner uniform in it (``randsample``). An empty bucket drops the query for this step,
    without a redraw, as the original does."""
    psi = db.similarity(iq, np.arange(db.num_images), kind)
    u = float(rng.rand()[0, 0])
    if kind == "binary":
        members = np.flatnonzero(psi == 1 if u < 0.5 else psi == 0)
    else:
        bucket = int(np.searchsorted(np.cumsum(fractions), u, side="right"))
        members = np.flatnonzero([psi >= 0.5, (psi > 0) & (psi < 0.5), psi == 0][min(bucket, 2)])
    if len(members) == 0:
        return None
    partner = int(members[int(rng.randsample(len(members), 1)[0]) - 1])
    return TrainingTuple(iq, partner, np.zeros(0, np.int64), np.array([psi[partner]], np.float32))


def _sample(ctx: MiningContext, iq: int) -> TrainingTuple | None:
    return sample_pair(ctx.db, iq, ctx.rng, ctx.loss.labels or "graded")


register_sampler(SamplerEntry("pairs", _sample, uses_cache=False, doc="GCL's pairs: 50/25/25 by graded similarity"))
