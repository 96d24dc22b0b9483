"""deepIBL's SGD update (identical in all ``train*.m`` and ``trainWeakly``; reference §8.8).

    m <- mu * m - wd * W - G / T
    W <- W + lr * m

with G the gradient summed over the batch's tuples and T the number of (query, negative) pairs.
This equals ``torch.optim.SGD(lr, momentum=mu, weight_decay=wd)`` on the objective sum(L_q) / T.
"""
from __future__ import annotations

import numpy as np

MOMENTUM, WEIGHT_DECAY = 0.9, 1e-3


def deepibl_sgd_step(weights: np.ndarray, grad_sum: np.ndarray, num_pairs: int, lr: float,
                     momentum: np.ndarray | None = None, momentum_factor: float = MOMENTUM,
                     weight_decay: float = WEIGHT_DECAY, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """One update of one tensor in ``dtype`` (float32: MATLAB's single); returns (weights, momentum)."""
    w = np.asarray(weights, dtype)
    g = np.asarray(grad_sum, dtype)
    m = np.zeros_like(w) if momentum is None else np.asarray(momentum, dtype)
    m = dtype(momentum_factor) * m - dtype(weight_decay) * w - g / dtype(num_pairs)
    return w + dtype(lr) * m, m
