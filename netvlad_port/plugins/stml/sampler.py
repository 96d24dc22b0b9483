"""NAN's mining rule, as STML trains with it (Nanne's ``pittsburgh.py``, STML's ``--dataloader_margin``;
[docs/stml.md](../../../docs/stml.md#losses)): of the candidates MATLAB's mining finds, the negatives with
d(q, n) < d(q, p) + the mining margin in plain (not squared) distances; none: the query is skipped.
The margin is ``--mining-margin`` or the loss's own (``sampler_params``), on purpose not the loss margin.
"""

from __future__ import annotations

import numpy as np

from ...errors import NetVladPortError
from ...train.options import PluginOption, register_option
from ...train.samplers import MiningContext, SamplerEntry, register_sampler


def l2_violators(margin: float):
    """The keep rule on squared distances: sqrt(d_n) < sqrt(d_p) + margin."""

    def keep(dn: np.ndarray, d_p: float) -> np.ndarray:
        return np.sqrt(dn) < np.sqrt(d_p) + margin

    return keep


def mining_margin(opts, loss) -> float:
    given = opts.extra("mining_margin")
    return float(loss.sampler_params["margin"] if given is None else given)


def _sample(ctx: MiningContext, iq: int):
    return ctx.mine(iq, keep=l2_violators(mining_margin(ctx.opts, ctx.loss)))


def _check_margin(opts, loss) -> None:
    if opts.extra("mining_margin") is not None and loss.mining != "violators-l2":
        raise NetVladPortError(f"--mining-margin is for the losses mined by plain distances (stml, triplet-stml, "
                               f"triplet-nanne), not --loss {loss.name}")  # fmt: skip


register_sampler(SamplerEntry("violators-l2", _sample, doc="d(q,n) < d(q,p) + mining margin, plain distances (NAN)"))
register_option(PluginOption("mining_margin", None, "STML's dataloader_margin: negatives with d(q,n) < d(q,p) + "
                             "this, plain distances (stml, triplet-stml, triplet-nanne) [1.5 stml, 0.1, sqrt 0.1]",
                             "float", check=_check_margin))  # fmt: skip
