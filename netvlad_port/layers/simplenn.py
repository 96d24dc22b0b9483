"""MatConvNet's built-in layer types: ``conv``, ``relu``, ``pool``, ``normalize`` (LRN).

Facts: [docs/matlab.md#matconvnet-operators](../../docs/matlab.md#matconvnet-operators).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import fastpow
from ..errors import NetFormatError
from ..matconvnet import mat
from ..matconvnet.spec import (
    CONV,
    NORMALIZE,
    POOL,
    RELU,
    WHOLE_L2,
    LayerSpec,
    LayerType,
    Shape,
    numbers,
    pad4,
    pair,
    register_layer,
    window_out,
)
from .base import MatLayer, in_fp32, param, to_numpy

NORMALIZE_MODES = ("exact", "matconvnet-cpu")


class Conv(MatLayer):
    """``vl_nnconv``: cross-correlation, zero pad [top bottom left right], stride, dilation, groups."""

    matlab_type = CONV

    def __init__(self, spec: LayerSpec, in_channels: int = 0):
        super().__init__(spec)
        f = spec.weights[0]  # H x W x Cin/groups x Cout
        self.weight = param(f.transpose(3, 2, 0, 1))
        self.bias = param(spec.weights[1]) if len(spec.weights) > 1 else None
        self.groups = in_channels // f.shape[2] if in_channels else 1
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
        out = [to_numpy(tensors[0]).transpose(2, 3, 1, 0)]  # Cout x Cin x H x W -> H x W x Cin x Cout
        return out + [to_numpy(t) for t in tensors[1:]]

    def params(self):
        return {"pad": self.pad, "stride": self.stride, "dilate": self.dilate}


class ReLU(MatLayer):
    matlab_type = RELU

    def __init__(self, spec: LayerSpec, in_channels: int = 0):
        super().__init__(spec)
        self.leak = spec.params["leak"]

    def forward(self, x, inplace: bool = False):
        if self.leak:
            return F.leaky_relu(x, self.leak, inplace=inplace)
        return F.relu_(x) if inplace else F.relu(x)

    def params(self):
        return {"leak": self.leak}


class Pool(MatLayer):
    """``vl_nnpool``: windows clipped at the border (padding never wins a max; avg divides by the
    number of real pixels). Out size floor((H + pt + pb - k) / s) + 1."""

    matlab_type = POOL

    def __init__(self, spec: LayerSpec, in_channels: int = 0):
        super().__init__(spec)
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

    def params(self):
        return {"method": self.method, "pool": self.pool, "stride": self.stride, "pad": self.pad}


class Normalize(MatLayer):
    """``vl_nnnormalize`` (LRN): y = x (kappa + alpha sum_{t in G(c)} x_t^2)^-beta over a channel window
    G(c) = [c - floor((N-1)/2), c + ceil((N-1)/2)]. With N >= 2D it is NetVLAD's preL2 / intranorm,
    x / sqrt(sum x^2 + 1e-12): epsilon inside the root ([docs/matlab.md#normalisations]).

    ``mode="matconvnet-cpu"`` reproduces MatConvNet's CPU MEX (``fast_pow``), see :mod:`..fastpow`."""

    matlab_type = NORMALIZE

    def __init__(self, spec: LayerSpec, in_channels: int = 0):
        super().__init__(spec)
        self.param = spec.params["param"]
        self.mode = "exact"

    def window_sum_sq(self, x: torch.Tensor) -> torch.Tensor:
        n, c = int(self.param[0]), x.shape[1]
        before, after = (n - 1) // 2, n - 1 - (n - 1) // 2
        sq = x * x
        if before >= c - 1 and after >= c - 1:
            return sq.sum(1, keepdim=True)
        padded = F.pad(sq, (0, 0, 0, 0, before, after))
        return sum(padded[:, i : i + c] for i in range(n))

    @in_fp32
    def forward(self, x):
        n, kappa, alpha, beta = self.param
        if self.mode == "matconvnet-cpu":
            return fastpow.normalize_cpu(x, int(n), kappa, alpha, beta)
        s = self.window_sum_sq(x)
        if beta == 0.5:
            return x / torch.sqrt(kappa + alpha * s)
        return x * torch.pow(kappa + alpha * s, -beta)

    def params(self):
        return {"param": self.param}


# --- MAT fields, defaults and shapes (vl_simplenn_tidy) ------------------------------------------
def _conv_canonical(layer: LayerSpec, where: str, previous: LayerSpec | None) -> None:
    p = layer.params
    p["pad"] = pad4(p.get("pad", 0), f"{where} pad")
    p["stride"] = pair(p.get("stride"), f"{where} stride")
    p["dilate"] = pair(p.get("dilate"), f"{where} dilate")
    w = layer.weights
    f = np.asarray(w[0])
    if f.ndim > 4:
        raise NetFormatError(f"{where}: conv filter has {f.ndim} dimensions; expected H x W x Cin x Cout")
    if f.ndim == 2 and previous is not None and previous.type == WHOLE_L2:
        f = f[None, None]  # a squeezed 1 x 1 x Cin x Cout WPCA
    w[0] = f.reshape(f.shape + (1,) * (4 - f.ndim))
    if len(w) == 2:
        w[1] = np.asarray(w[1]).reshape(-1)


def _conv_shape(layer: LayerSpec, shape: Shape, where: str) -> Shape:
    h, w, c = shape
    p = layer.params
    fh, fw, fcin, fcout = layer.weights[0].shape
    if fcin == 0 or c % fcin:
        raise NetFormatError(
            f"{where}: filters expect {fcin} input channels but the previous layer gives {c} (not a multiple)"
        )
    groups = c // fcin
    if fcout % groups:
        raise NetFormatError(f"{where}: {fcout} filters cannot be split into {groups} groups")
    if len(layer.weights) == 2 and layer.weights[1].size not in (0, fcout):
        raise NetFormatError(f"{where}: bias has {layer.weights[1].size} values for {fcout} filters")
    if h is not None:
        (pt, pb, pl, pr), (sy, sx), (dy, dx) = p["pad"], p["stride"], p["dilate"]
        h = window_out(h, (fh - 1) * dy + 1, sy, pt, pb, where)
        w = window_out(w, (fw - 1) * dx + 1, sx, pl, pr, where)
    return h, w, fcout


def _pool_canonical(layer: LayerSpec, where: str, previous: LayerSpec | None) -> None:
    p = layer.params
    method = str(p.get("method", "max"))
    if method not in ("max", "avg"):
        raise NetFormatError(f"{where}: pool method '{method}' is not max or avg")
    p["method"] = method
    if "pool" not in p or np.size(p["pool"]) == 0:
        raise NetFormatError(f"{where}: pool layer has no 'pool' window size")
    p["pool"] = pair(p["pool"], f"{where} pool")
    p["stride"] = pair(p.get("stride"), f"{where} stride")
    p["pad"] = pad4(p.get("pad", 0), f"{where} pad")


def _pool_shape(layer: LayerSpec, shape: Shape, where: str) -> Shape:
    h, w, c = shape
    if h is not None:
        (ph, pw), (sy, sx), (pt, pb, pl, pr) = layer.params["pool"], layer.params["stride"], layer.params["pad"]
        h, w = window_out(h, ph, sy, pt, pb, where), window_out(w, pw, sx, pl, pr, where)
    return h, w, c


def _relu_canonical(layer: LayerSpec, where: str, previous: LayerSpec | None) -> None:
    leak = layer.params.get("leak", 0)
    layer.params["leak"] = numbers(leak, f"{where} leak")[0] if np.size(leak) else 0.0


def _normalize_canonical(layer: LayerSpec, where: str, previous: LayerSpec | None) -> None:
    values = numbers(layer.params.get("param", []), f"{where} param")
    if len(values) != 4:
        raise NetFormatError(f"{where}: normalize param must be [N kappa alpha beta], got {values}")
    if values[0] < 1 or values[0] != round(values[0]):
        raise NetFormatError(f"{where}: normalize window N must be a whole number >= 1, got {values[0]:g}")
    layer.params["param"] = tuple(float(x) for x in values)


def _head(layer: LayerSpec) -> dict:
    return {"name": mat.string(layer.name), "type": mat.string(layer.type)}


register_layer(
    LayerType(
        CONV,
        Conv,
        n_weights=(1, 2),
        canonical=_conv_canonical,
        shape=_conv_shape,
        fields=lambda l: {
            **_head(l),
            "weights": mat.weights_cell(l.weights),
            "pad": mat.num([l.params["pad"]]),
            "stride": mat.num([l.params["stride"]]),
            "dilate": mat.num([l.params["dilate"]]),
            "opts": mat.cell([]),
            "precious": mat.false(),
        },
    )
)
register_layer(
    LayerType(
        RELU,
        ReLU,
        canonical=_relu_canonical,
        fields=lambda l: {**_head(l), "leak": mat.num(l.params["leak"]), "precious": mat.false()},
    )
)
register_layer(
    LayerType(
        POOL,
        Pool,
        canonical=_pool_canonical,
        shape=_pool_shape,
        fields=lambda l: {
            **_head(l),
            "method": mat.string(l.params["method"]),
            "pool": mat.num([l.params["pool"]]),
            "stride": mat.num([l.params["stride"]]),
            "pad": mat.num([l.params["pad"]]),
            "opts": mat.cell([]),
            "precious": mat.false(),
        },
    )
)
register_layer(
    LayerType(
        NORMALIZE,
        Normalize,
        canonical=_normalize_canonical,
        fields=lambda l: {**_head(l), "param": mat.num([l.params["param"]]), "precious": mat.false()},
    ),
    aliases=("lrn",),  # the older MatConvNet name
)
