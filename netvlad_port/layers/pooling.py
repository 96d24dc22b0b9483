"""Global pooling layers the GCL results use ([docs/gcl.md](../../docs/gcl.md)): GeM, generalised-mean
pooling over all H x W, (mean_HW clamp(x, 1e-6)^p)^(1/p) with p trainable (initialised to 3) or fixed
(GCL ``src/networks.py``). Max and avg pooling are NetVLAD's ``layerTotalMaxPool`` / ``layerTotalAvgPool``.
MATLAB has no GeM layer, so ``export-mat`` refuses networks with one."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import NetFormatError
from ..matconvnet.spec import LayerSpec, LayerType, numbers, register_layer
from .base import MatLayer, in_fp32, param, to_numpy

GEM = "gem"
GEM_P, GEM_EPS = 3.0, 1e-6


class GeM(MatLayer):
    """GeM over all H x W: N x C x H x W -> N x C x 1 x 1. ``weights{1}`` is p when it is trained;
    otherwise ``params["p"]`` holds it."""

    matlab_type = GEM

    def __init__(self, spec: LayerSpec, in_channels: int = 0):
        super().__init__(spec)
        if spec.weights:
            self.p = param(np.asarray(spec.weights[0]).reshape(1))
        else:
            self.register_buffer("p", torch.tensor([float(spec.params["p"])]), persistent=False)

    @in_fp32
    def forward(self, x):
        p = self.p.to(x.dtype)  # a tensor exponent and avg_pool2d, as GCL's GeM: the same last bits
        x = x.clamp(min=GEM_EPS).pow(p)
        if torch.onnx.is_in_onnx_export():  # ONNX's AveragePool needs a fixed window: a mean over H x W
            return x.mean(dim=(2, 3), keepdim=True).pow(1.0 / p)
        return F.avg_pool2d(x, (x.size(-2), x.size(-1))).pow(1.0 / p)

    def weight_params(self):
        return [self.p] if isinstance(self.p, torch.nn.Parameter) else []

    def matlab_arrays(self, tensors):
        return [to_numpy(t).reshape(1, 1) for t in tensors]

    def params(self):
        return {} if self.weight_params() else {"p": float(self.p.item())}


def _gem_canonical(layer: LayerSpec, where: str, previous: LayerSpec | None) -> None:
    values = numbers(layer.weights[0] if layer.weights else layer.params.get("p", GEM_P), f"{where} p")
    if len(values) != 1 or values[0] <= 0:
        raise NetFormatError(f"{where}: GeM's p must be one number > 0, got {values}")
    if layer.weights:
        layer.weights[0] = np.asarray(layer.weights[0], np.float32).reshape(1, 1)
    else:
        layer.params["p"] = float(values[0])


def gem_layer(d: int, clusters=None, alpha=None, trainable: bool = True) -> LayerSpec:
    """The ``gem`` addLayers token: GeM with a trainable p = 3."""
    if trainable:
        return LayerSpec(GEM, "gem:core", [np.full((1, 1), GEM_P, np.float32)])
    return LayerSpec(GEM, "gem:core", [], {"p": GEM_P})


register_layer(LayerType(
    GEM, GeM, n_weights=(0, 1), canonical=_gem_canonical, shape=lambda l, s, w: (1, 1, s[2]), token="gem",
    aggregate=gem_layer,
))  # fmt: skip
