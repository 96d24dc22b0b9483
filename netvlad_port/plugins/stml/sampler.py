"""NAN's and STML's mining rule (Nanne ``pittsburgh.py`` ``QueryDatasetFromStruct.__getitem__``, STML
``dataloaders/pittsburgh.py:286-432``; [docs/stml.md](../../../docs/stml.md#losses)), for the losses
that name ``violators-l2`` (stml, triplet-stml, triplet-nanne). MATLAB's samplers are not touched.

- positives: every db image within √nonTrivPosDistSqThr (10 m) of the query, d ≤ 1 m included
  (``radius_neighbors``, ``pittsburgh.py:317-319``); the best is the nearest in feature space;
- negatives: ``nNegChoice`` (1000) draws **with replacement** (``np.random.choice``, line 407) from
  the db images beyond posDistThr (lines 328-335), merged with the query's cache (``np.unique``), the
  10·nNegCap nearest, of those the ones with d(q,n) < d(q,p) + the mining margin in plain distances
  (line 424), the first nNegCap (10);
- the cache becomes the chosen negatives (line 432); a query with none is skipped and its cache kept.

The margin is ``--mining-margin`` or the loss's own (``sampler_params``), on purpose not the loss margin.
"""

from __future__ import annotations

import numpy as np

from ...errors import NetVladPortError
from ...matlab_random import as_rng
from ...train.mining import TrainingTuple, sq_dists
from ...train.options import PluginOption, register_option
from ...train.samplers import MiningContext, SamplerEntry, register_sampler


def l2_violators(margin: float):
    """The keep rule on squared distances: sqrt(d_n) < sqrt(d_p) + margin."""

    def keep(dn: np.ndarray, d_p: float) -> np.ndarray:
        return np.sqrt(dn) < np.sqrt(d_p) + margin

    return keep


def positives(db, iq: int) -> np.ndarray:
    """``nontrivial_positives``: db ids with d ≤ √nonTrivPosDistSqThr, d ≤ 1 m included."""
    return db.get_pos_ids(db.utm_q[:, iq], db.non_triv_pos_dist_sq_thr)[0]


def potential_negatives(db, iq: int) -> np.ndarray:
    """``potential_negatives``: db ids beyond posDistThr."""
    return np.setdiff1d(np.arange(db.num_images), db.pos_q(iq), assume_unique=True)


def mine_nan(db, iq: int, q_feat, db_feats, neg_cache: list, rng, n_neg_sample: int = 1000, n_neg: int = 10,
             margin: float = 0.1) -> TrainingTuple | None:  # fmt: skip
    """Query ``iq``'s tuple by NAN's rule, or None (no positive, or no violator: ``neg_cache[iq]`` kept).
    The draws with replacement are ``ceil(n · rand(1, nNegChoice))`` of the run's generator."""
    pos = positives(db, iq)
    pool = potential_negatives(db, iq)
    if len(pos) == 0 or len(pool) == 0:
        return None
    d_pos = np.sqrt(sq_dists(q_feat, db_feats[pos]))
    best, d_p = int(pos[np.argmin(d_pos)]), float(d_pos.min())
    drawn = pool[as_rng(rng).randi(len(pool), 1, n_neg_sample).ravel() - 1]
    cand = np.unique(np.concatenate([np.asarray(neg_cache[iq], np.int64), drawn]))
    d_neg = np.sqrt(sq_dists(q_feat, db_feats[cand]))
    nearest = np.argsort(d_neg, kind="stable")[: 10 * n_neg]
    chosen = cand[nearest[d_neg[nearest] < d_p + margin][:n_neg]]
    if len(chosen) == 0:
        return None
    neg_cache[iq] = chosen.copy()
    return TrainingTuple(iq, best, chosen)


def mining_margin(opts, loss) -> float:
    given = opts.extra("mining_margin")
    return float(loss.sampler_params["margin"] if given is None else given)


def _sample(ctx: MiningContext, iq: int):
    n_db, o = ctx.db.num_images, ctx.opts
    return mine_nan(ctx.db, iq, ctx.feats[n_db + iq], ctx.feats[:n_db], ctx.neg_cache, ctx.rng, o.n_neg_choice,
                    o.n_neg_cap, mining_margin(o, ctx.loss))  # fmt: skip


def _check_margin(opts, loss) -> None:
    if opts.extra("mining_margin") is not None and loss.mining != "violators-l2":
        raise NetVladPortError(f"--mining-margin is for the losses mined by plain distances (stml, triplet-stml, "
                               f"triplet-nanne), not --loss {loss.name}")  # fmt: skip


register_sampler(SamplerEntry("violators-l2", _sample, cache_attention=False, doc="NAN/STML: d(q,n) < d(q,p) + "
                              "mining margin, plain distances; positives d <= 10 m; negatives drawn with replacement; "
                              "the cache without the attention modules (tasks/train.py:255-256)"))  # fmt: skip
register_option(PluginOption("mining_margin", None, "STML's dataloader_margin: negatives with d(q,n) < d(q,p) + "
                             "this, plain distances (stml, triplet-stml, triplet-nanne) [1.5 stml, 0.1, sqrt 0.1]",
                             "float", check=_check_margin))  # fmt: skip
