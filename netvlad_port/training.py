"""The pieces of deepIBL's update that a training loop uses (reference §8.2, §8.3, §8.8).

* ``back_prop_to_layer``: layers before it are frozen (no gradient computed); every trainable
  tensor -- conv weights and biases, both VLAD tensors -- has learning-rate and weight-decay
  multipliers 1 (``netPrepareForTrain``); ``fix_layers`` (MATLAB ``fixLayers``) are frozen too.
* ``deepibl_sgd``: SGD with momentum 0.9, weight decay 1e-3 on every trained tensor.
* ``batch_objective``: sum of the tuples' losses over the number of (query, negative) pairs, the
  divisor deepIBL's update uses for all six kernels, Joint included.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from .sgd import MOMENTUM, WEIGHT_DECAY


def layer_index(model, layer: str | int) -> int:
    """0-based index of a MATLAB 1-based index or exact layer name (``relja_whichLayer``)."""
    if isinstance(layer, int):
        if not 1 <= layer <= len(model.layers):
            raise IndexError(f"backPropToLayer {layer} is not in 1..{len(model.layers)}")
        return layer - 1
    hits = [i for i, l in enumerate(model.layers) if l.name == layer]
    if len(hits) != 1:
        raise KeyError(f"layer name '{layer}' matches {len(hits)} layers")
    return hits[0]


def back_prop_to_layer(model, layer: str | int = 1, fix_layers: Iterable[str] = ()) -> list[nn.Parameter]:
    """Freeze everything below ``layer`` and the ``fix_layers``; return the trainable tensors."""
    first = layer_index(model, layer)
    fixed = set(fix_layers)
    for i, l in enumerate(model.layers):
        for p in l.parameters():
            p.requires_grad_(i >= first and l.name not in fixed)
    return [p for p in model.parameters() if p.requires_grad]


def deepibl_sgd(params: Sequence[nn.Parameter], lr: float) -> torch.optim.SGD:
    """m <- 0.9 m + (G/T + 1e-3 W); W <- W - lr m: deepIBL's update with its momentum sign flipped."""
    return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, dampening=0, nesterov=False, weight_decay=WEIGHT_DECAY)


def batch_objective(losses: Sequence[torch.Tensor], num_pairs: int) -> torch.Tensor:
    """sum(L_q) / T, T = number of (query, negative) pairs of the batch (its tuples' negatives)."""
    return torch.stack(list(losses)).sum() / num_pairs


def frozen_trunk_forward(model, images: torch.Tensor, first_trainable: int, stop: int | None = None) -> torch.Tensor:
    """Layers below ``first_trainable`` without autograd, the rest with it: the output of layer ``stop``."""
    with torch.no_grad():
        x = model.run(model.subtract_mean(images), 0, first_trainable)
    return model.run(x, first_trainable, stop)
