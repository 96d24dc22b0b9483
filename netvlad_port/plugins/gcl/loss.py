"""The Generalized Contrastive Loss (Leyva-Vallina, Strisciuglio & Petkov, CVPR 2023;
[docs/gcl.md](../../../docs/gcl.md)): a graded similarity psi in [0, 1] weighs attraction against
repulsion, L = psi * d^2 / 2 + (1 - psi) * max(m - d, 0)^2 / 2, d the Euclidean distance
(``src/criteria.py`` of marialeyvallina/generalized_contrastive_loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...losses.base import LossOutput, register_loss

MARGIN = 0.5  # criteria.py:7, train.py:45
EPS = 1e-6  # torch.nn.PairwiseDistance's eps, added to a - b (criteria.py:11)


def gcl_loss(d: Tensor, psi: Tensor, margin: float = MARGIN) -> Tensor:
    """Per pair: psi * d^2 / 2 + (1 - psi) * max(margin - d, 0)^2 / 2 (psi on the attraction term,
    the orientation of the corrected code). Not reduced."""
    return psi * 0.5 * d.pow(2) + (1 - psi) * 0.5 * (margin - d).clamp_min(0).pow(2)


def pair_distance(a: Tensor, b: Tensor) -> Tensor:
    """||a - b + 1e-6||: the distance the original computes."""
    return F.pairwise_distance(a, b, p=2, eps=EPS)


@register_loss("gcl", labels="graded", mining="pairs")
def gcl(q: Tensor, p: Tensor, negs: Tensor, *, labels=None, margin: float = MARGIN) -> LossOutput:
    """GCL on pairs sampled as the original samples them (no mining): (query, partner) with the
    partner's graded similarity as psi -- or on every pair (query, positive), (query, negative k) of a
    tuple. Every pair counts, so the batch objective is the mean over pairs, as the original's mean over
    its mini-batches."""
    others = torch.cat([p[None], negs])
    if labels is None:
        raise ValueError("gcl needs the graded similarity of each pair (the dataset's similarity)")
    psi = torch.as_tensor(labels, dtype=others.dtype, device=others.device)
    d = pair_distance(q[None].expand_as(others), others)
    return LossOutput(gcl_loss(d, psi, margin).sum(), len(others))


@register_loss("contrastive", labels="binary", mining="pairs")
def contrastive(q: Tensor, p: Tensor, negs: Tensor, *, labels=None, margin: float = MARGIN) -> LossOutput:
    """The classic contrastive loss: GCL with binary labels (a ground-truth positive or not), as GCL's
    ``binary_MSLS`` baseline."""
    return gcl(q, p, negs, labels=labels, margin=margin)
