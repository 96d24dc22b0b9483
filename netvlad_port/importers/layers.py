"""The layers the PyTorch originals share, from their state_dict entries: torchvision backbones
(``layers.backbones.match_backbone``), Nanne's and STML's NetVLAD module, GCL's GeM, and the global
poolings with ``F.normalize`` ([docs/pytorch_models.md](../../docs/pytorch_models.md#key-mapping))."""

from __future__ import annotations

import numpy as np

from ..errors import NetFormatError
from ..layers.pooling import GEM
from ..matconvnet.spec import TORCH_VLAD, TOTAL_AVG, TOTAL_MAX, WHOLE_L2, LayerSpec

POOLINGS = ("netvlad", "max", "avg")


def array(t, where: str = "") -> np.ndarray:
    """A tensor's values as float32; integer, boolean and complex tensors are not weights."""
    if not t.is_floating_point():
        raise NetFormatError(f"{where}: holds {str(t.dtype).replace('torch.', '')} values; expected floating point")
    return t.detach().float().cpu().numpy()


def netvlad_layer(pool: dict, where: str) -> LayerSpec:
    """``NetVLAD`` (netvlad.py): ``conv.weight`` K x D x 1 x 1, ``conv.bias`` (vladv2 only), ``centroids``
    K x D; the PyTorch flavour, whole (normalisations and cluster-major order inside)."""
    expected = {"conv.weight", "centroids"} | ({"conv.bias"} if "conv.bias" in pool else set())
    if set(pool) != expected:
        missing, extra = sorted(expected - set(pool)), sorted(set(pool) - expected)
        raise NetFormatError(
            f"{where}: NetVLAD pool: "
            + "; ".join(
                f"{label} {', '.join(keys)}" for label, keys in (("missing", missing), ("unexpected", extra)) if keys
            )
        )
    names = ["conv.weight"] + (["conv.bias"] if "conv.bias" in pool else []) + ["centroids"]
    return LayerSpec(TORCH_VLAD, "pool", [array(pool[n], f"{where}.{n}") for n in names])


def gem_layer(pool: dict, where: str) -> LayerSpec:
    """GCL's ``GeM`` (src/networks.py): the learned p (``pool.p``, shape [1]); eps 1e-6 is not stored."""
    if set(pool) != {"p"} or tuple(pool["p"].shape) != (1,):
        got = ", ".join(f"pool.{k} {tuple(v.shape)}" for k, v in pool.items()) or "nothing"
        raise NetFormatError(f"{where}: GeM pool: expected pool.p of shape [1], got {got}")
    return LayerSpec(GEM, "pool", [array(pool["p"], f"{where}.p").reshape(1, 1)])


def global_pool_layer(kind: str) -> LayerSpec:
    """``AdaptiveMaxPool2d((1, 1))`` / ``AdaptiveAvgPool2d((1, 1))``: over all H x W."""
    return LayerSpec(TOTAL_MAX if kind == "max" else TOTAL_AVG, f"{kind}:pool")


def l2_layer() -> LayerSpec:
    """``F.normalize(x)`` of the flattened descriptor: x / max(||x||, 1e-12)."""
    return LayerSpec(WHOLE_L2, "l2", [], {"flavour": "pytorch"})
