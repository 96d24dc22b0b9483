"""NetVLAD's weakly supervised triplet ranking loss (``trainWeakly``, reference §8.6)."""
from __future__ import annotations

from torch import Tensor

MARGIN = 0.1  # on squared distances


def triplet_weakly(q: Tensor, p: Tensor, negs: Tensor, margin: float = MARGIN) -> Tensor:
    """sum_j max(0, |q-p|^2 + m - |q-n_j|^2): squared distances, no square root. Only violating
    negatives contribute a gradient, as in the MATLAB code."""
    dp = ((q - p) ** 2).sum()
    dn = ((q[None] - negs) ** 2).sum(1)
    return (dp + margin - dn).clamp_min(0).sum()
