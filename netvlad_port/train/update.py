"""The pieces of deepIBL's update ([docs/matlab.md#backproptolayer](../../docs/matlab.md#backproptolayer),
[#sgd-step](../../docs/matlab.md#sgd-step)).

* ``back_prop_to_layer``: layers before it are frozen (no gradient computed); every trainable
  tensor -- conv weights and biases, both VLAD tensors -- has learning-rate and weight-decay
  multipliers 1 (``netPrepareForTrain``); ``fix_layers`` (MATLAB ``fixLayers``) are frozen too.
* ``deepibl_sgd``: deepIBL's SGD block as ``torch.optim.SGD`` on the objective sum(L_q) / T.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..errors import NetVladPortError
from ..layers.backbones import block_layer_names
from .options import MOMENTUM, WEIGHT_DECAY


def layer_index(model, layer: str | int) -> int:
    """0-based index of a MATLAB 1-based index or exact layer name (``relja_whichLayer``)."""
    if isinstance(layer, int):
        if not 1 <= layer <= len(model.layers):
            raise NetVladPortError(f"backPropToLayer {layer} is not in 1..{len(model.layers)}")
        return layer - 1
    hits = [i for i, l in enumerate(model.layers) if l.name == layer]
    inside = [l.name for l in model.layers if l.matlab_type == "backbone" and layer in block_layer_names(l)]
    if not hits and inside:
        raise NetVladPortError(f"layer name '{layer}' is inside the backbone block '{inside[0]}': split the block "
                               f"there first (netvlad-port cluster --split-backbone {layer})")  # fmt: skip
    if len(hits) != 1:
        raise NetVladPortError(f"layer name '{layer}' matches {len(hits)} layers")
    return hits[0]


def back_prop_to_layer(model, layer: str | int = 1, fix_layers: Iterable[str] = ()) -> list[nn.Parameter]:
    """Freeze everything below ``layer`` and the ``fix_layers``; return the trainable tensors."""
    first = layer_index(model, layer)
    fixed = set(fix_layers)
    unknown = fixed - {l.name for l in model.layers}
    if unknown:  # MATLAB asserts that every fixLayers name exists
        raise NetVladPortError(f"fixLayers: no layer named {', '.join(sorted(unknown))}")
    for i, l in enumerate(model.layers):
        for p in l.parameters():
            p.requires_grad_(i >= first and l.name not in fixed)
    return [p for p in model.parameters() if p.requires_grad]


def param_groups(model, params: Sequence[nn.Parameter], lr: float, weight_decay: float = WEIGHT_DECAY) -> list[dict]:
    """One SGD group per trained tensor with the layer's ``learningRate(j)`` / ``weightDecay(j)``
    multipliers from the file, 1 where it has none (``netPrepareForTrain``); ``lr_mult`` is kept for
    the learning-rate schedule."""
    trained = {id(p) for p in params}
    groups = []
    for layer in model.layers:
        ws = layer.weight_params()
        lr_mult = layer.multipliers.get("learningRate", [1.0] * len(ws))
        wd_mult = layer.multipliers.get("weightDecay", [1.0] * len(ws))
        for p, lm, wm in zip(ws, lr_mult, wd_mult):
            if id(p) in trained:
                groups.append({"params": [p], "lr": lr * lm, "weight_decay": weight_decay * wm, "lr_mult": lm})
    return groups


def deepibl_sgd(params, lr: float, momentum: float = MOMENTUM, weight_decay: float = WEIGHT_DECAY) -> torch.optim.SGD:
    """m <- mu m + (G/T + wd W); W <- W - lr m: deepIBL's update with its momentum sign flipped.
    ``params``: tensors, or groups from :func:`param_groups` (their own lr and weight decay)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=0, nesterov=False, weight_decay=weight_decay)
