"""PyTorch modules with MatConvNet / NetVLAD layer semantics (reference §2, §5).

Tensors are N x C x H x W; MATLAB's H x W x C x N arrays map onto them by ``permute(3, 2, 0, 1)``.
A VLAD output (MATLAB 1 x K x D x N) is N x D x 1 x K here, so ``vlad:intranorm`` is the same
channel-wise normalize layer and the flatten below gives MATLAB's K-fastest order (§2.7).
Each module converts its weights from and to MATLAB layout in ``from_spec`` / ``to_spec``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import fastpow
from .matconvnet.spec import (CONV, NORMALIZE, POOL, RELU, TOTAL_AVG, TOTAL_MAX, VLAD, VLADV2,
                              WHOLE_L2, LayerSpec)

# relja_l2normalize_col: x / (sqrt(sum x^2) + eps), eps outside the root (reference §2.6).
WHOLE_L2_EPS = 1e-12
NORMALIZE_MODES = ("exact", "matconvnet-cpu")


def _param(array: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.tensor(np.ascontiguousarray(array), dtype=torch.float32))  # contiguous copy, torch-owned


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def matlab_flatten(x: torch.Tensor) -> torch.Tensor:
    """``reshape(x, [], N)`` of MATLAB's H x W x C x N array, for our N x C x H x W tensor."""
    return x.permute(0, 1, 3, 2).reshape(x.shape[0], -1)


class MatLayer(nn.Module):
    """Base: a MATLAB layer with its name and type."""

    matlab_type = ""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def weight_params(self) -> list[nn.Parameter]:
        """The trainable tensors in the order of MATLAB's ``weights{j}``."""
        return []

    def matlab_arrays(self, tensors: list[torch.Tensor]) -> list[np.ndarray]:
        """Tensors shaped like :meth:`weight_params` (the weights or their gradients) in MATLAB layout."""
        return []

    def matlab_weights(self) -> list[np.ndarray]:
        return [a.astype(np.float32) for a in self.matlab_arrays(self.weight_params())]

    def to_spec(self) -> LayerSpec:
        return LayerSpec(type=self.matlab_type, name=self.name)

    def extra_repr(self) -> str:
        return f"'{self.name}'"


class Conv(MatLayer):
    """``vl_nnconv``: cross-correlation, zero pad [top bottom left right], stride, dilation, groups."""

    matlab_type = CONV

    def __init__(self, spec: LayerSpec, in_channels: int):
        super().__init__(spec.name)
        f = spec.weights[0]  # H x W x Cin/groups x Cout
        self.weight = _param(f.transpose(3, 2, 0, 1))
        self.bias = _param(spec.weights[1]) if len(spec.weights) > 1 else None
        self.groups = in_channels // f.shape[2]
        self.pad, self.stride, self.dilate = spec.params["pad"], spec.params["stride"], spec.params["dilate"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.shape[2:] == (1, 1) and x.shape[2:] == (1, 1) and self.groups == 1 and not any(self.pad):
            y = F.linear(x.flatten(1), w.flatten(1), self.bias)  # WPCA: a 1x1 conv on 1x1 maps
            return y[:, :, None, None]
        t, b, l, r = self.pad
        if t == b and l == r:
            pad = (t, l)
        else:
            x, pad = F.pad(x, (l, r, t, b)), 0
        return F.conv2d(x, w, self.bias, self.stride, pad, self.dilate, self.groups)

    def weight_params(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def matlab_arrays(self, tensors):
        out = [_np(tensors[0]).transpose(2, 3, 1, 0)]  # Cout x Cin x H x W -> H x W x Cin x Cout
        return out + [_np(t) for t in tensors[1:]]

    def to_spec(self) -> LayerSpec:
        return LayerSpec(CONV, self.name, self.matlab_weights(),
                         {"pad": self.pad, "stride": self.stride, "dilate": self.dilate})


class ReLU(MatLayer):
    matlab_type = RELU

    def __init__(self, spec: LayerSpec):
        super().__init__(spec.name)
        self.leak = spec.params["leak"]

    def forward(self, x, inplace: bool = False):
        if self.leak:
            return F.leaky_relu(x, self.leak, inplace=inplace)
        return F.relu_(x) if inplace else F.relu(x)

    def to_spec(self):
        return LayerSpec(RELU, self.name, [], {"leak": self.leak})


class Pool(MatLayer):
    """``vl_nnpool``: windows clipped at the border (padding never wins a max; avg divides by the
    number of real pixels). Out size floor((H + pt + pb - k) / s) + 1 (reference §5.2)."""

    matlab_type = POOL

    def __init__(self, spec: LayerSpec):
        super().__init__(spec.name)
        p = spec.params
        self.method, self.pool, self.stride, self.pad = p["method"], p["pool"], p["stride"], p["pad"]

    def forward(self, x):
        t, b, l, r = self.pad
        padding = (l, r, t, b)
        if self.method == "max":
            if any(padding):
                x = F.pad(x, padding, value=float("-inf"))
            if x.requires_grad and torch.is_grad_enabled():
                # Scan each window W-major like MatConvNet's MEX, so that among equal values the
                # gradient goes to the same one (the first in MATLAB's column-major order).
                t = F.max_pool2d(x.transpose(2, 3), self.pool[::-1], self.stride[::-1])
                return t.transpose(2, 3)
            return F.max_pool2d(x, self.pool, self.stride)
        area = self.pool[0] * self.pool[1]
        if not any(padding):
            return F.avg_pool2d(x, self.pool, self.stride)
        total = F.avg_pool2d(F.pad(x, padding), self.pool, self.stride) * area
        ones = F.pad(torch.ones_like(x[:1, :1]), padding)
        count = F.avg_pool2d(ones, self.pool, self.stride) * area
        return total / count

    def to_spec(self):
        return LayerSpec(POOL, self.name, [], {"method": self.method, "pool": self.pool,
                                               "stride": self.stride, "pad": self.pad})


class Normalize(MatLayer):
    """``vl_nnnormalize`` (LRN): y = x (kappa + alpha sum_{t in G(c)} x_t^2)^-beta over a channel window
    G(c) = [c - floor((N-1)/2), c + ceil((N-1)/2)]. With N >= 2D it is NetVLAD's preL2 / intranorm,
    x / sqrt(sum x^2 + 1e-12): epsilon inside the root (reference §2.3, §5.4).

    ``mode="matconvnet-cpu"`` reproduces MatConvNet's CPU MEX (``fast_pow``), see :mod:`.fastpow`."""

    matlab_type = NORMALIZE

    def __init__(self, spec: LayerSpec):
        super().__init__(spec.name)
        self.param = spec.params["param"]
        self.mode = "exact"

    def window_sum_sq(self, x: torch.Tensor) -> torch.Tensor:
        n, c = int(self.param[0]), x.shape[1]
        before, after = (n - 1) // 2, n - 1 - (n - 1) // 2
        sq = x * x
        if before >= c - 1 and after >= c - 1:
            return sq.sum(1, keepdim=True)
        padded = F.pad(sq, (0, 0, 0, 0, before, after))
        return sum(padded[:, i:i + c] for i in range(n))

    def forward(self, x):
        n, kappa, alpha, beta = self.param
        if self.mode == "matconvnet-cpu":
            return fastpow.normalize_cpu(x, int(n), kappa, alpha, beta)
        s = self.window_sum_sq(x)
        if beta == 0.5:
            return x / torch.sqrt(kappa + alpha * s)
        return x * torch.pow(kappa + alpha * s, -beta)

    def to_spec(self):
        return LayerSpec(NORMALIZE, self.name, [], {"param": self.param})


class VLADCore(MatLayer):
    """``layerVLAD``: a = softmax_K(W1^T x) (no bias), V_dk = sum_i a_ik (x_id + W2_dk) with W2 = -centres
    (reference §2.4). ``layerVLADv2`` adds the bias W2 to the scores and uses W3 as offsets (§2.8).
    Output N x D x 1 x K (MATLAB 1 x K x D x N); batched matrix products, no loop over clusters."""

    matlab_type = VLAD

    def __init__(self, spec: LayerSpec):
        super().__init__(spec.name)
        self.matlab_type = spec.type
        w = spec.weights
        self.assign = _param(w[0][0, 0])  # D x K
        if spec.type == VLADV2:
            self.assign_bias = _param(w[1].reshape(-1))  # K
            self.offsets = _param(w[2][0, 0])  # D x K
        else:
            self.assign_bias = None
            self.offsets = _param(w[1][0, 0])  # D x K, = -centres

    @property
    def K(self) -> int:
        return self.assign.shape[1]

    @property
    def D(self) -> int:
        return self.assign.shape[0]

    def forward(self, x):
        n, d = x.shape[:2]
        xf = x.reshape(n, d, -1)  # N x D x M
        scores = torch.einsum("dk,ndm->nkm", self.assign, xf)
        if self.assign_bias is not None:
            scores = scores + self.assign_bias[None, :, None]
        a = torch.softmax(scores, dim=1)  # N x K x M
        v = torch.bmm(xf, a.transpose(1, 2)) + self.offsets[None] * a.sum(2)[:, None, :]  # N x D x K
        return v[:, :, None, :]

    def weight_params(self):
        bias = [self.assign_bias] if self.assign_bias is not None else []
        return [self.assign] + bias + [self.offsets]

    def matlab_arrays(self, tensors):
        out = [_np(tensors[0])[None, None]]  # D x K -> 1 x 1 x D x K
        if len(tensors) == 3:
            out.append(_np(tensors[1])[None])  # K -> 1 x K
        return out + [_np(tensors[-1])[None, None]]

    def to_spec(self):
        return LayerSpec(self.matlab_type, self.name, self.matlab_weights(), {"K": self.K, "D": self.D})


class WholeL2Normalize(MatLayer):
    """``layerWholeL2Normalize`` (postL2 / finalL2): the MATLAB-order flattened vector over
    (||x|| + 1e-12); output N x numel x 1 x 1 (MATLAB 1 x 1 x numel x N)."""

    matlab_type = WHOLE_L2

    def forward(self, x):
        flat = matlab_flatten(x)
        y = flat / (torch.linalg.vector_norm(flat, dim=1, keepdim=True) + WHOLE_L2_EPS)
        return y[:, :, None, None]


class TotalMaxPool(MatLayer):
    """``layerTotalMaxPool`` ('max:core'): max over all H x W."""

    matlab_type = TOTAL_MAX

    def forward(self, x):
        return x.amax(dim=(2, 3), keepdim=True)


class TotalAvgPool(MatLayer):
    """``layerTotalAvgPool`` ('avg:core'): mean over all H x W."""

    matlab_type = TOTAL_AVG

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True)


def build_layer(spec: LayerSpec, in_channels: int) -> MatLayer:
    """The module for one validated :class:`LayerSpec`."""
    if spec.type == CONV:
        return Conv(spec, in_channels)
    if spec.type == RELU:
        return ReLU(spec)
    if spec.type == POOL:
        return Pool(spec)
    if spec.type == NORMALIZE:
        return Normalize(spec)
    if spec.type in (VLAD, VLADV2):
        return VLADCore(spec)
    simple = {WHOLE_L2: WholeL2Normalize, TOTAL_MAX: TotalMaxPool, TOTAL_AVG: TotalAvgPool}
    return simple[spec.type](spec.name)
