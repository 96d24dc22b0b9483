"""Layers that hold a PyTorch block rather than MATLAB arrays: torchvision backbones, the sTML wing's
attention modules. A block's weights are its ``state_dict`` tensors (parameters and BatchNorm running
statistics, without ``num_batches_tracked``) in ``state_dict`` order and torch layout, so the converted
folder stores them as any layer's; MATLAB has no such layers, so ``export-mat`` refuses them.

A type registers ``build(in_channels, params) -> nn.Module``; a new block (no weights given) starts from
PyTorch's default initialisation drawn from a fixed seed, as the originals' modules do when built.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..errors import NetFormatError
from ..matconvnet.spec import LayerSpec
from .base import MatLayer

BLOCK_SEED = 0
BUILDERS: dict[str, Callable[[int, dict], nn.Module]] = {}


def block_state(block: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a block layer stores: ``state_dict`` without ``num_batches_tracked`` (used only when
    BatchNorm's momentum is None, which no original sets)."""
    return {k: v for k, v in block.state_dict().items() if not k.endswith("num_batches_tracked")}


def build_block(layer_type: str, in_channels: int, params: dict) -> nn.Module:
    """A new block of a registered type, initialised from :data:`BLOCK_SEED` (torch's RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BLOCK_SEED)
        return BUILDERS[layer_type](in_channels, params)


class TorchBlockLayer(MatLayer):
    """A torch block as a layer; ``spec.weights`` are its :func:`block_state` tensors (empty: initialise)."""

    def __init__(self, spec: LayerSpec, in_channels: int = 0):
        super().__init__(spec)
        self.matlab_type = spec.type
        self._params = dict(spec.params)
        self.block = build_block(spec.type, in_channels, self._params)
        if spec.weights:
            self.block.load_state_dict(state_from_weights(self.block, spec.weights, spec), strict=False)

    def forward(self, x):
        return self.block(x)

    def weight_params(self):
        return list(self.block.parameters())

    def matlab_arrays(self, tensors):
        return [t.detach().cpu().double().numpy() for t in tensors]

    def matlab_weights(self):
        return [v.detach().cpu().numpy().astype(np.float32) for v in block_state(self.block).values()]

    def params(self):
        return dict(self._params)


def state_from_weights(block: nn.Module, weights: list, spec: LayerSpec) -> dict[str, torch.Tensor]:
    """``weights`` (in :func:`block_state` order) as the block's state, each shape checked."""
    state = block_state(block)
    where = f"layer '{spec.name}' ({spec.type})"
    if len(weights) != len(state):
        raise NetFormatError(f"{where}: {len(weights)} weights, expected {len(state)}")
    out = {}
    for (key, ref), w in zip(state.items(), weights):
        if tuple(np.shape(w)) != tuple(ref.shape):
            raise NetFormatError(f"{where}: {key} is {tuple(np.shape(w))}, expected {tuple(ref.shape)}")
        out[key] = torch.as_tensor(np.asarray(w, np.float32))
    return out


def weights_from_state(block: nn.Module, state: dict[str, torch.Tensor], where: str) -> list[np.ndarray]:
    """A state_dict with the block's own key names as :func:`block_state`-ordered float32 arrays; a missing,
    extra or mis-shaped key is refused by name (``num_batches_tracked`` may be present or not)."""
    own = block_state(block)
    given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing, extra = [k for k in own if k not in given], [k for k in given if k not in own]
    if missing or extra:
        what = "; ".join(
            f"{label} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", extra))
            if keys
        )
        raise NetFormatError(f"{where}: {what}")
    out = []
    for key, ref in own.items():
        v = given[key]
        if tuple(v.shape) != tuple(ref.shape):
            raise NetFormatError(f"{where}: {key} has shape {tuple(v.shape)}, expected {tuple(ref.shape)}")
        if not v.is_floating_point():
            raise NetFormatError(f"{where}: {key} holds {v.dtype} values; expected floating point")
        out.append(v.detach().cpu().numpy().astype(np.float32))
    return out


def block_canonical(layer: LayerSpec, where: str, previous) -> None:
    layer.weights = [np.asarray(w, np.float32) for w in layer.weights]
