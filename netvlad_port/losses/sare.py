"""The six SARE losses of deepIBL, one function per MATLAB training file
([docs/matlab.md#sare-losses](../../docs/matlab.md#sare-losses)).

Each takes one tuple's fresh features -- the query ``q`` (D), its positive ``p`` (D) and the
negatives ``negs`` (M x D) -- and returns that query's loss L_q. Distances are squared L2 (the
Exp kernels use their square roots); there is no temperature. deepIBL's hand-written dzdy are the
exact derivatives of these formulas (GaussJoint as written, with dot products), so autograd
reproduces them. The batch objective deepIBL's SGD minimises is sum of L_q / number of
(query, negative) pairs, for the Joint variants too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import register_loss


def _sq_dists(q: Tensor, p: Tensor, negs: Tensor) -> tuple[Tensor, Tensor]:
    return ((q - p) ** 2).sum(), ((q[None] - negs) ** 2).sum(1)


@register_loss("sare-ind", matlab="trainGaussKernalInd")
def gauss_kernal_ind(q: Tensor, p: Tensor, negs: Tensor) -> Tensor:
    """``trainGaussKernalInd`` ("Our-Ind.", the released model): sum_k -ln(e^-dp / (e^-dp + e^-dk))."""
    dp, dn = _sq_dists(q, p, negs)
    return F.softplus(dp - dn).sum()


@register_loss("sare-joint", matlab="trainGaussKernalJoint")
def gauss_kernal_joint(q: Tensor, p: Tensor, negs: Tensor) -> Tensor:
    """``trainGaussKernalJoint``: ln(1 + sum_k exp(2 q.(n_k - p))), dot products as the code has it."""
    s = 2 * (negs - p[None]) @ q
    return torch.logsumexp(torch.cat([s.new_zeros(1), s]), 0)


@register_loss("exp-ind", matlab="trainExpKernalInd")
def exp_kernal_ind(q: Tensor, p: Tensor, negs: Tensor) -> Tensor:
    """``trainExpKernalInd``: the Gaussian Ind form on non-squared distances."""
    dp, dn = _sq_dists(q, p, negs)
    return F.softplus(dp.sqrt() - dn.sqrt()).sum()


@register_loss("exp-joint", matlab="trainExpKernalJoint")
def exp_kernal_joint(q: Tensor, p: Tensor, negs: Tensor) -> Tensor:
    """``trainExpKernalJoint``: ln(1 + sum_k exp(|q-p| - |q-n_k|))."""
    dp, dn = _sq_dists(q, p, negs)
    e = dp.sqrt() - dn.sqrt()
    return torch.logsumexp(torch.cat([e.new_zeros(1), e]), 0)


@register_loss("cauchy-ind", matlab="trainCauchyKernelInd")
def cauchy_kernel_ind(q: Tensor, p: Tensor, negs: Tensor) -> Tensor:
    """``trainCauchyKernelInd``: K(d) = 1 / (1 + d); sum_k -ln(K(dp) / (K(dp) + K(dk)))."""
    dp, dn = _sq_dists(q, p, negs)
    return torch.log1p((1 + dp) / (1 + dn)).sum()


@register_loss("cauchy-joint", matlab="trainCauchyKernelJoint")
def cauchy_kernel_joint(q: Tensor, p: Tensor, negs: Tensor) -> Tensor:
    """``trainCauchyKernelJoint``: ln(1 + sum_k (1 + dp) / (1 + dk))."""
    dp, dn = _sq_dists(q, p, negs)
    return torch.log1p(((1 + dp) / (1 + dn)).sum())
