"""The base of every layer module: a MATLAB layer with its name, type and weights in MATLAB layout.

Tensors are N x C x H x W; MATLAB's H x W x C x N arrays map onto them by ``permute(3, 2, 0, 1)``.
Each module converts its weights from and to MATLAB layout (``__init__`` / ``to_spec``).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from ..matconvnet.spec import LayerSpec


def param(array: np.ndarray) -> nn.Parameter:
    """A float32 parameter owning a contiguous copy of ``array``."""
    return nn.Parameter(torch.tensor(np.ascontiguousarray(array), dtype=torch.float32))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


HALF = (torch.float16, torch.bfloat16)


def in_fp32(forward):
    """Run a layer's ``forward`` in float32 with autocast off when its input is fp16/bf16 or autocast is
    on: its sums of squares and VLAD residual sums overflow fp16 (65504) on conv5 maps. fp32 and fp64
    inputs run as they are, so exact runs are untouched."""

    @functools.wraps(forward)
    def wrapper(self, x):
        if x.dtype in HALF or torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return forward(self, x.float())
        return forward(self, x)

    return wrapper


def matlab_flatten(x: torch.Tensor) -> torch.Tensor:
    """``reshape(x, [], N)`` of MATLAB's H x W x C x N array, for our N x C x H x W tensor."""
    return x.permute(0, 1, 3, 2).reshape(x.shape[0], -1)


class MatLayer(nn.Module):
    """A MATLAB layer built from its :class:`LayerSpec` (``in_channels``: what the previous layer gives)."""

    matlab_type = ""

    def __init__(self, spec: LayerSpec, in_channels: int = 0):
        super().__init__()
        self.name = spec.name
        self.multipliers = dict(spec.multipliers)  # learningRate / weightDecay multipliers from the file

    def weight_params(self) -> list[nn.Parameter]:
        """The trainable tensors in the order of MATLAB's ``weights{j}``."""
        return []

    def matlab_arrays(self, tensors: list[torch.Tensor]) -> list[np.ndarray]:
        """Tensors shaped like :meth:`weight_params` (the weights or their gradients) in MATLAB layout."""
        return []

    def matlab_weights(self) -> list[np.ndarray]:
        return [a.astype(np.float32) for a in self.matlab_arrays(self.weight_params())]

    def params(self) -> dict:
        """The :class:`LayerSpec` params that rebuild this layer."""
        return {}

    def to_spec(self) -> LayerSpec:
        return LayerSpec(self.matlab_type, self.name, self.matlab_weights(), self.params(), dict(self.multipliers))

    def extra_repr(self) -> str:
        return f"'{self.name}'"
