"""The sharpened triplet marginal loss (sTML, Choi et al., Pattern Recognition 141, 2023) and the triplet
losses of the rows it is compared with ([docs/stml.md](../../../docs/stml.md#losses)); from
deepguider/deattention_with_stml_for_vpr ``utils/custom_loss.py`` and Nanne/pytorch-NetVlad ``main.py``.

Distances are plain Euclidean, d(a, b) = ||a - b|| (not squared). Each tuple's loss is the sum over its
negatives; the trainer divides the batch by its number of negatives, as ``tasks/train.py:66-74``. Tuples
are mined NAN's way: negatives with d(q, n) < d(q, p) + the mining margin (``--mining-margin``, STML's
``--dataloader_margin``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...losses.base import LossOutput, register_loss

MARGIN, MARGIN_PN = 0.1, 1.4  # 1run_train_our_deattention_with_sTML.sh: --tml2_margin, --tml2_pn_margin
STML_MINING_MARGIN = 1.5  # the same script's --dataloader_margin
TRIPLET_MARGIN = 0.1  # STML's baseline and attention rows: nn.TripletMarginLoss(margin=0.1)
NAN_MARGIN = math.sqrt(0.1)  # Nanne's main.py: TripletMarginLoss(margin=opt.margin ** 0.5)
TINY = 1e-24  # d = sqrt(max(|a - b|^2, TINY)): the original has no floor and gives NaN gradients at a == b


def l2(a: Tensor, b: Tensor) -> Tensor:
    """Rows' Euclidean distances (``custom_loss.py:9-10``), floored at 1e-12."""
    return ((a - b) ** 2).sum(-1).clamp_min(TINY).sqrt()


def stml_loss(q: Tensor, p: Tensor, negs: Tensor, margin=MARGIN, margin_pn=MARGIN_PN, version: int = 1) -> Tensor:
    """Per negative: v1 max(0, d(q,p) + m - d(q,n) + m_pn - d(p,n)); v2 max(0, m_pn - d(p,n))
    (``custom_loss.py:143-150``). Not reduced."""
    d_pn = l2(p[None], negs)
    if int(version) == 2:
        return (margin_pn - d_pn).clamp_min(0)
    if int(version) != 1:
        raise ValueError(f"sTML version must be 1 or 2, got {version}")
    return (l2(q, p) + margin - l2(q[None], negs) + margin_pn - d_pn).clamp_min(0)


@register_loss("stml", mining="violators-l2", sampler_params={"margin": STML_MINING_MARGIN})
def stml(q: Tensor, p: Tensor, negs: Tensor, *, margin=MARGIN, margin_pn=MARGIN_PN, version: int = 1) -> LossOutput:
    """The sharpened triplet marginal loss (``--loss-param version=2`` for v2), summed over the negatives."""
    return LossOutput(stml_loss(q, p, negs, margin, margin_pn, version).sum(), len(negs))


def triplet_margin(q: Tensor, p: Tensor, negs: Tensor, margin: float) -> Tensor:
    """``nn.TripletMarginLoss(margin, p=2)`` per negative: max(0, d(q,p) - d(q,n) + margin), with
    torch's pairwise-distance eps (1e-6 added to a - b)."""
    d = torch.nn.functional.pairwise_distance
    return (d(q[None], p[None]) - d(q[None].expand_as(negs), negs) + margin).clamp_min(0)


@register_loss("triplet-stml", mining="violators-l2", sampler_params={"margin": TRIPLET_MARGIN})
def triplet_stml(q: Tensor, p: Tensor, negs: Tensor, *, margin=TRIPLET_MARGIN) -> LossOutput:
    """STML's triplet rows (baseline, attention baselines): margin 0.1, summed over the negatives."""
    return LossOutput(triplet_margin(q, p, negs, margin).sum(), len(negs))


@register_loss("triplet-nanne", mining="violators-l2", sampler_params={"margin": NAN_MARGIN})
def triplet_nanne(q: Tensor, p: Tensor, negs: Tensor, *, margin=NAN_MARGIN) -> LossOutput:
    """Nanne's pytorch-NetVlad triplet (the published baseline): margin sqrt(0.1), summed over the negatives."""
    return LossOutput(triplet_margin(q, p, negs, margin).sum(), len(negs))
