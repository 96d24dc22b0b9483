"""Neutral description of a MatConvNet SimpleNN network (``net.layers`` + ``net.meta``).

Every reader (MAT v5 structs, MAT v7.3/HDF5, classdef objects) produces a :class:`NetSpec`;
the PyTorch model, the converted folder and ``export-mat`` all consume one. Weights are kept in
MATLAB layout (H x W x Cin x Cout filters, 1 x 1 x D x K VLAD tensors), so a round trip is exact.
Facts: ``shared/spec/matlab_reference.md`` §2, §5.6, §10.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import NetFormatError

# Layer types as MatConvNet / NetVLAD name them (custom layers by their MATLAB class).
CONV, RELU, POOL, NORMALIZE = "conv", "relu", "pool", "normalize"
VLAD, VLADV2 = "layerVLAD", "layerVLADv2"
WHOLE_L2, TOTAL_MAX, TOTAL_AVG = "layerWholeL2Normalize", "layerTotalMaxPool", "layerTotalAvgPool"
CUSTOM_TYPES = (VLAD, VLADV2, WHOLE_L2, TOTAL_MAX, TOTAL_AVG)
LAYER_TYPES = (CONV, RELU, POOL, NORMALIZE) + CUSTOM_TYPES

# Number of weight tensors each type carries (None: any / optional).
_N_WEIGHTS = {CONV: (1, 2), RELU: (0,), POOL: (0,), NORMALIZE: (0,), VLAD: (2,), VLADV2: (3,),
              WHOLE_L2: (0,), TOTAL_MAX: (0,), TOTAL_AVG: (0,)}


@dataclass
class LayerSpec:
    """One entry of ``net.layers``: ``type`` is a MatConvNet type or a NetVLAD class name."""

    type: str
    name: str
    weights: list[np.ndarray] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def where(self, index: int) -> str:
        return f"layer {index + 1} ('{self.name}')"


@dataclass
class NetSpec:
    layers: list[LayerSpec]
    meta: dict[str, Any] = field(default_factory=dict)  # averageImage, netID, sessionID, epoch

    @property
    def average_rgb(self) -> np.ndarray:
        """``averageImage(1,1,:)`` as float32 (3,): what NetVLAD subtracts (reference §6)."""
        avg = self.meta.get("averageImage")
        if avg is None or np.size(avg) == 0:
            return np.zeros(3, np.float32)
        a = np.asarray(avg, np.float32)
        if a.ndim == 3:
            return a[0, 0, :].copy()
        if a.size == 3:
            return a.reshape(3).copy()
        raise NetFormatError(f"meta.normalization.averageImage has shape {a.shape}; expected 1x1x3 or HxWx3")

    def index(self, name: str) -> int:
        """0-based index of a layer by exact name (``relja_whichLayer``)."""
        hits = [i for i, l in enumerate(self.layers) if l.name == name]
        if len(hits) != 1:
            raise KeyError(f"layer name '{name}' matches {len(hits)} layers")
        return hits[0]


def _pad4(value, what: str) -> tuple[int, int, int, int]:
    v = [int(x) for x in np.asarray(value, dtype=np.float64).ravel()]
    if len(v) == 1:
        return (v[0],) * 4
    if len(v) == 4:
        return tuple(v)  # top bottom left right
    raise NetFormatError(f"{what}: pad must be a scalar or [top bottom left right], got {v}")


def _pair(value, what: str, default: int = 1) -> tuple[int, int]:
    if value is None or np.size(value) == 0:
        return (default, default)
    v = [int(x) for x in np.asarray(value, dtype=np.float64).ravel()]
    if len(v) == 1:
        return (v[0], v[0])
    if len(v) == 2:
        return (v[0], v[1])
    raise NetFormatError(f"{what}: expected a scalar or [y x], got {v}")


def normalize_params(layer: LayerSpec, where: str) -> None:
    """Fill MatConvNet defaults (``vl_simplenn_tidy``) and canonicalise shapes in place."""
    p = layer.params
    if layer.type == CONV:
        p["pad"] = _pad4(p.get("pad", 0), f"{where} pad")
        p["stride"] = _pair(p.get("stride"), f"{where} stride")
        p["dilate"] = _pair(p.get("dilate"), f"{where} dilate")
    elif layer.type == POOL:
        method = str(p.get("method", "max"))
        if method not in ("max", "avg"):
            raise NetFormatError(f"{where}: pool method '{method}' is not max or avg")
        p["method"] = method
        if "pool" not in p or np.size(p["pool"]) == 0:
            raise NetFormatError(f"{where}: pool layer has no 'pool' window size")
        p["pool"] = _pair(p["pool"], f"{where} pool")
        p["stride"] = _pair(p.get("stride"), f"{where} stride")
        p["pad"] = _pad4(p.get("pad", 0), f"{where} pad")
    elif layer.type == RELU:
        leak = p.get("leak", 0)
        p["leak"] = float(np.asarray(leak).ravel()[0]) if np.size(leak) else 0.0
    elif layer.type == NORMALIZE:
        param = np.asarray(p.get("param", []), np.float64).ravel()
        if param.size != 4:
            raise NetFormatError(f"{where}: normalize param must be [N kappa alpha beta], got {param.tolist()}")
        p["param"] = tuple(float(x) for x in param)


def canonical_weights(layer: LayerSpec, where: str, after_whole_l2: bool = False) -> None:
    """Restore the MATLAB shapes that squeezing or MATLAB's trailing-singleton rule dropped.
    A 2-D filter after a whole-vector L2 layer is a squeezed 1 x 1 x Cin x Cout WPCA."""
    w = layer.weights
    if layer.type == CONV and w:
        f = np.asarray(w[0])
        if f.ndim > 4:
            raise NetFormatError(f"{where}: conv filter has {f.ndim} dimensions; expected H x W x Cin x Cout")
        if f.ndim == 2 and after_whole_l2:
            f = f[None, None]
        w[0] = f.reshape(f.shape + (1,) * (4 - f.ndim))
        if len(w) == 2:
            w[1] = np.asarray(w[1]).reshape(-1)
    elif layer.type in (VLAD, VLADV2):
        d, k = layer.params.get("D"), layer.params.get("K")
        a = np.asarray(w[0])
        if a.ndim == 2:  # squeezed D x K
            d, k = a.shape
        elif a.ndim == 4:
            d, k = a.shape[2], a.shape[3]
        else:
            raise NetFormatError(f"{where}: VLAD weights{{1}} has shape {a.shape}; expected 1x1xDxK or DxK")
        layer.params["D"], layer.params["K"] = int(d), int(k)
        offsets = 1 if layer.type == VLAD else 2
        for j in (0, offsets):
            if np.asarray(w[j]).size != d * k:
                raise NetFormatError(f"{where}: weights{{{j + 1}}} has {np.asarray(w[j]).size} values; "
                                     f"expected D*K = {d}*{k}")
            w[j] = np.asarray(w[j]).reshape(1, 1, d, k, order="F")
        if layer.type == VLADV2:
            if np.asarray(w[1]).size != k:
                raise NetFormatError(f"{where}: layerVLADv2 weights{{2}} has {np.asarray(w[1]).size} values; "
                                     f"expected K = {k}")
            w[1] = np.asarray(w[1]).reshape(1, k)


def check_weight_count(layer: LayerSpec, where: str) -> None:
    allowed = _N_WEIGHTS[layer.type]
    if len(layer.weights) not in allowed:
        raise NetFormatError(f"{where}: {layer.type} layer has {len(layer.weights)} weight arrays; "
                             f"expected {' or '.join(map(str, allowed))}")


def _pool_out(n: int, k: int, s: int, p0: int, p1: int, where: str) -> int:
    if n + p0 + p1 < k:
        raise NetFormatError(f"{where}: window {k} does not fit the padded input size {n + p0 + p1}")
    return (n + p0 + p1 - k) // s + 1


def infer_shapes(spec: NetSpec, image_hw: tuple[int, int] | None = (480, 640),
                 in_channels: int = 3) -> list[tuple[int | None, int | None, int]]:
    """Output (H, W, C) of every layer, checking that weight shapes chain (MATLAB ``vl_simplenn``
    rules, reference §5). ``image_hw=None`` checks channels only (spatial sizes stay ``None``)."""
    h, w = image_hw if image_hw is not None else (None, None)
    c = in_channels
    out = []
    for i, layer in enumerate(spec.layers):
        where = layer.where(i)
        p = layer.params
        if layer.type == CONV:
            f = layer.weights[0]
            fh, fw, fcin, fcout = f.shape
            if fcin == 0 or c % fcin:
                raise NetFormatError(f"{where}: filters expect {fcin} input channels but the previous layer "
                                     f"gives {c} (not a multiple)")
            groups = c // fcin
            if fcout % groups:
                raise NetFormatError(f"{where}: {fcout} filters cannot be split into {groups} groups")
            if len(layer.weights) == 2 and layer.weights[1].size not in (0, fcout):
                raise NetFormatError(f"{where}: bias has {layer.weights[1].size} values for {fcout} filters")
            if h is not None:
                (pt, pb, pl, pr), (sy, sx), (dy, dx) = p["pad"], p["stride"], p["dilate"]
                h = _pool_out(h, (fh - 1) * dy + 1, sy, pt, pb, where)
                w = _pool_out(w, (fw - 1) * dx + 1, sx, pl, pr, where)
            c = fcout
        elif layer.type == POOL:
            if h is not None:
                (ph, pw), (sy, sx), (pt, pb, pl, pr) = p["pool"], p["stride"], p["pad"]
                h = _pool_out(h, ph, sy, pt, pb, where)
                w = _pool_out(w, pw, sx, pl, pr, where)
        elif layer.type in (VLAD, VLADV2):
            d, k = p["D"], p["K"]
            if d != c:
                raise NetFormatError(f"{where}: VLAD expects D = {d} input channels but the previous layer gives {c}")
            h, w, c = 1, k, d
        elif layer.type in (TOTAL_MAX, TOTAL_AVG):
            h, w = 1, 1
        elif layer.type == WHOLE_L2:
            if h is None:
                if i and spec.layers[i - 1].type in (VLAD, VLADV2):
                    c = c * spec.layers[i - 1].params["K"]
                    h = w = 1
            else:
                c, h, w = h * w * c, 1, 1
        out.append((h, w, c))
    return out


def infer_method(spec: NetSpec) -> str:
    """The ``addLayers`` method string (e.g. ``vlad_preL2_intra``) the layers correspond to."""
    types = [l.type for l in spec.layers]
    names = [l.name for l in spec.layers]
    core = {VLAD: "vlad", VLADV2: "vladv2", TOTAL_MAX: "max", TOTAL_AVG: "avg"}
    agg = [core[t] for t in types if t in core]
    if not agg:
        return ""
    pre = ["preL2"] if "preL2" in names else []
    if agg[0] in ("max", "avg"):  # addLayers' own examples: max, avg, preL2_max
        return "_".join(pre + agg[:1])
    return "_".join(agg[:1] + pre + (["intra"] if "vlad:intranorm" in names else []))


def validate(spec: NetSpec) -> None:
    """Check every layer and that shapes chain; raise :class:`NetFormatError` naming the layer."""
    if not spec.layers:
        raise NetFormatError("the network has no layers")
    for i, layer in enumerate(spec.layers):
        where = layer.where(i)
        if layer.type not in LAYER_TYPES:
            raise NetFormatError(f"unsupported layer type '{layer.type}' at layer {i + 1} ('{layer.name}')")
        check_weight_count(layer, where)
        normalize_params(layer, where)
        canonical_weights(layer, where, after_whole_l2=i > 0 and spec.layers[i - 1].type == WHOLE_L2)
    infer_shapes(spec, image_hw=None)
