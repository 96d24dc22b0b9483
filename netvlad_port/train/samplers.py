"""Samplers: how a batch's queries become training tuples, one registry entry per rule (as
pytorch-metric-learning keeps miners apart from losses). A loss names its sampler (``LossEntry.mining``).

The core has MATLAB's two rules on the train feature cache ([docs/matlab.md#mining](../../docs/matlab.md#mining)):
``hardest`` (deepIBL: the ``nNegCap`` hardest negatives) and ``violators`` (trainWeakly: only negatives
within the margin; a query with a positive but no violator counts as a zero loss). Plug-ins add
theirs with :func:`register_sampler`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..registry import Registry
from .mining import TrainingTuple, mine_tuple


@dataclass
class MiningContext:
    """What a sampler sees: the training data, the cache (db rows, then queries; None when the sampler
    needs none), the per-query negative caches, the run's generator, its options and the margin that
    drives the loss (and so mining and the rank loss)."""

    db: Any
    feats: np.ndarray | None
    neg_cache: list[np.ndarray]
    rng: Any
    opts: Any
    margin: float
    loss: Any

    def mine(self, iq: int, keep=None, margin: float | None = None, exclude_very_hard: bool = False):
        """:func:`mine_tuple` of query ``iq`` on the cache with the run's nNegChoice/Cap/Cache."""
        n_db, o = self.db.num_images, self.opts
        return mine_tuple(self.db, iq, self.feats[n_db + iq], self.feats[:n_db], self.neg_cache, self.rng,
                          o.n_neg_choice, o.n_neg_cap, o.n_neg_cache, margin=margin,
                          exclude_very_hard=exclude_very_hard, keep=keep)  # fmt: skip


@dataclass(frozen=True)
class SamplerEntry:
    """``sample(ctx, iq)`` gives query ``iq``'s tuple or None. ``uses_cache``: the train feature cache is
    refreshed for it (every ``compFeatsFrequency`` queries); ``empty_counts``: a query that has a
    non-trivial positive but no tuple counts as a zero loss in the batch mean (trainWeakly);
    ``check(opts, loss)`` refuses options that have no meaning for it, before anything is computed;
    ``cache_attention``: False when the cache is computed without the trainable attention modules (the
    encoder straight into the aggregation, as STML's cache is, ``tasks/train.py:255-256``)."""

    name: str
    sample: Callable[[MiningContext, int], TrainingTuple | None]
    uses_cache: bool = True
    empty_counts: bool = False
    check: Callable[[Any, Any], None] | None = None
    doc: str = ""
    cache_attention: bool = True


SAMPLERS: Registry[SamplerEntry] = Registry("sampler", builtins="netvlad_port.train.samplers", key=str.lower)


def register_sampler(entry: SamplerEntry, replace: bool = False) -> SamplerEntry:
    return SAMPLERS.register(entry.name, entry, replace=replace)


def _hardest(ctx: MiningContext, iq: int) -> TrainingTuple | None:
    return ctx.mine(iq)


def _violators(ctx: MiningContext, iq: int) -> TrainingTuple | None:
    return ctx.mine(iq, margin=ctx.margin, exclude_very_hard=ctx.opts.exclude_very_hard)


register_sampler(SamplerEntry("hardest", _hardest, doc="the nNegCap hardest negatives (deepIBL)"))
register_sampler(SamplerEntry("violators", _violators, empty_counts=True,
                              doc="negatives within the margin of squared distances (trainWeakly)"))  # fmt: skip
