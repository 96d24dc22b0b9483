"""NetVLAD's weakly supervised triplet ranking loss (``trainWeakly``,
[docs/matlab.md#triplet-loss](../../docs/matlab.md#triplet-loss))."""

from __future__ import annotations

from torch import Tensor

from .base import LossOutput, register_loss

MARGIN = 0.1  # on squared distances


@register_loss("triplet", matlab="trainWeakly", params=("margin", "exclude_very_hard"), mining="violators")
def triplet_weakly(
    q: Tensor, p: Tensor, negs: Tensor, margin: float = MARGIN, exclude_very_hard: bool = False
) -> LossOutput:
    """sum_j max(0, |q-p|^2 + m - |q-n_j|^2) on squared distances. As in the MATLAB code the gradient
    and the pair count come from the violators on these fresh features only (``excludeVeryHard``:
    also without those closer than the positive); the logged value is the hinge over every negative."""
    dp = ((q - p) ** 2).sum()
    dn = ((q[None] - negs) ** 2).sum(1)
    hinge = (dp + margin - dn).clamp_min(0)
    active = dn < dp + margin
    if exclude_very_hard:
        active &= ~(dn < dp)
    return LossOutput((hinge * active).sum(), int(active.sum()), hinge.sum())
