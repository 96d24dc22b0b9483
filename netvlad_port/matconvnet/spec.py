"""Neutral description of a MatConvNet SimpleNN network (``net.layers`` + ``net.meta``).

Every reader (MAT v5 structs, MAT v7.3/HDF5, classdef objects) produces a :class:`NetSpec`;
the PyTorch model, the converted folder and ``export-mat`` all consume one. Weights are kept in
MATLAB layout (H x W x Cin x Cout filters, 1 x 1 x D x K VLAD tensors), so a round trip is exact.

What a layer type means -- its module, weight count, defaults, shape rule and MAT fields -- is one
:class:`LayerType` in :data:`LAYER_TYPES` (the built-in ones are in ``netvlad_port/layers/``).
Facts: [docs/matlab.md#simplenn-struct](../../docs/matlab.md#simplenn-struct).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import NetFormatError
from ..registry import Registry

# Built-in layer types as MatConvNet / NetVLAD name them (custom layers by their MATLAB class).
CONV, RELU, POOL, NORMALIZE = "conv", "relu", "pool", "normalize"
VLAD, VLADV2 = "layerVLAD", "layerVLADv2"
TORCH_VLAD = "netvlad"  # the whole NetVLAD module of Nanne's pytorch-NetVlad / STML (PyTorch flavour)
WHOLE_L2, TOTAL_MAX, TOTAL_AVG = "layerWholeL2Normalize", "layerTotalMaxPool", "layerTotalAvgPool"

TRAINING_MULTIPLIERS = ("learningRate", "weightDecay")  # per weight, read by netPrepareForTrain
Shape = tuple[int | None, int | None, int]  # (H, W, C) of a layer's output; H, W None: unknown
MAX_SIZE = 2**31 - 1  # the largest size, stride, pad or window torch's convolutions and pooling take (int32)
MAX_SIDE = 2**20  # the largest image side searched for the smallest image a network takes


@dataclass
class LayerSpec:
    """One entry of ``net.layers``: ``type`` is a MatConvNet type or a NetVLAD class name."""

    type: str
    name: str
    weights: list[np.ndarray] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    # per-weight training multipliers as MATLAB stores them ("learningRate", "weightDecay"), when present
    multipliers: dict[str, list[float]] = field(default_factory=dict)

    def where(self, index: int) -> str:
        return f"layer {index + 1} ('{self.name}')"


@dataclass
class NetSpec:
    layers: list[LayerSpec]
    meta: dict[str, Any] = field(default_factory=dict)  # averageImage, netID, sessionID, epoch
    # set by validate() only: what it checked (see `validated`); a new or replace()d spec starts unchecked
    _checked: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def validated(self) -> bool:
        """Whether :func:`validate` made this spec and its layers are still the ones it checked: the
        same objects, weight arrays and field values (an array changed in place is not seen)."""
        now = _contents(self.layers)
        return (
            self._checked is not None
            and len(now) == len(self._checked)
            and all(a is b for a, b in zip(now, self._checked))
        )

    @property
    def average_rgb(self) -> np.ndarray:
        """``averageImage(1,1,:)`` as float32 (3,): what NetVLAD subtracts
        ([docs/matlab.md#images](../../docs/matlab.md#images))."""
        avg = self.meta.get("averageImage")
        if avg is None or np.size(avg) == 0:
            return np.zeros(3, np.float32)
        numbers(avg, "meta.normalization.averageImage")
        a = np.asarray(avg, np.float32)
        if a.ndim == 3 and a.shape[2] == 3:
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


@dataclass(frozen=True)
class LayerType:
    """Everything the package knows about one layer type; register new ones with :func:`register_layer`.

    ``module(spec, in_channels)`` builds the torch module. ``canonical(layer, where, previous)`` fills
    MatConvNet's defaults and restores MATLAB shapes in place; ``shape(layer, (h, w, c), where)`` is
    the output size (``h, w`` may be None); ``fields(layer)`` the MATLAB struct fields as written;
    ``read(fields, where)`` the params from a MAT struct (default: every non-training field);
    ``recognise(fields)`` identifies a struct-ified custom layer that lost its class name. ``token``
    is the ``addLayers`` method token of an aggregation layer, built by ``aggregate(d, clusters,
    alpha)``; ``alpha(clusters, train_descs)`` is its initialisation rule when it needs k-means centres.
    A type without ``fields`` has no MATLAB counterpart: ``export-mat`` refuses it.
    """

    name: str
    module: Callable
    n_weights: tuple[int, ...] = (0,)
    custom: bool = False
    canonical: Callable[[LayerSpec, str, LayerSpec | None], None] | None = None
    shape: Callable[[LayerSpec, Shape, str], Shape] | None = None
    fields: Callable[[LayerSpec], dict] | None = None
    read: Callable[[dict, str], dict] | None = None
    recognise: Callable[[dict], bool] | None = None
    token: str | None = None
    aggregate: Callable[..., LayerSpec] | None = None
    alpha: Callable[[np.ndarray, np.ndarray], float] | None = None


LAYER_TYPES: Registry[LayerType] = Registry("layer type", builtins="netvlad_port.layers")


def register_layer(entry: LayerType, aliases: tuple[str, ...] = (), replace: bool = False) -> LayerType:
    """Make a layer type known to the reader, writer, model, converted folder and ``addLayers``."""
    return LAYER_TYPES.register(entry.name, entry, aliases, replace)


CLASSIFIER_TYPES = ("dropout", "softmax", "softmaxloss", "loss")  # an ImageNet model's head


def layer_type(name: str, where: str = "") -> LayerType:
    entry = LAYER_TYPES.get(name)
    if entry is None:
        hint = ("; an ImageNet model? `netvlad-port cluster --layer conv5_3` crops it (loadNet)"
                if name in CLASSIFIER_TYPES else "")  # fmt: skip
        raise NetFormatError(f"unsupported layer type '{name}'" + (f" at {where}" if where else "") + hint)
    return entry


# --- helpers for layer definitions ------------------------------------------------------------
def numbers(value, what: str, minimum: float | None = None, integral: bool = False) -> list:
    """A numeric field as a list: real, finite, and ``>= minimum`` / whole numbers when asked;
    anything else is a :class:`NetFormatError` naming the field."""
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise NetFormatError(f"{what}: expected numbers, got {a.dtype.kind == 'c' and 'complex values' or repr(value)}")
    a = a.astype(np.float64).ravel()
    if not np.isfinite(a).all():
        raise NetFormatError(f"{what}: NaN or infinite value {a.tolist()}")
    if integral and (a != np.round(a)).any():
        raise NetFormatError(f"{what}: expected whole numbers, got {a.tolist()}")
    if minimum is not None and (a < minimum).any():
        raise NetFormatError(f"{what}: values must be >= {minimum:g}, got {a.tolist()}")
    return [int(x) for x in a] if integral else a.tolist()


def _sizes(value, what: str, minimum: int) -> list[int]:
    """Whole numbers from ``minimum`` to :data:`MAX_SIZE` (beyond it torch's int32 sizes overflow)."""
    v = numbers(value, what, minimum=minimum, integral=True)
    if any(x > MAX_SIZE for x in v):
        raise NetFormatError(f"{what}: {max(v)} is beyond {MAX_SIZE}, the largest size torch's convolutions take")
    return v


def pad4(value, what: str) -> tuple[int, int, int, int]:
    """A scalar or [top bottom left right] pad (whole numbers >= 0)."""
    v = _sizes(value, what, 0)
    if len(v) == 1:
        return (v[0],) * 4
    if len(v) == 4:
        return tuple(v)
    raise NetFormatError(f"{what}: pad must be a scalar or [top bottom left right], got {v}")


def pair(value, what: str, default: int = 1) -> tuple[int, int]:
    """A scalar or [y x] (stride, dilate, pool size): whole numbers >= 1."""
    if value is None or np.size(value) == 0:
        return (default, default)
    v = _sizes(value, what, 1)
    if len(v) == 1:
        return (v[0], v[0])
    if len(v) == 2:
        return (v[0], v[1])
    raise NetFormatError(f"{what}: expected a scalar or [y x], got {v}")


def window_out(n: int, k: int, s: int, p0: int, p1: int, where: str) -> int:
    """Output length of a window k, stride s over n padded by p0 + p1 (``vl_nnpool`` / ``vl_nnconv``)."""
    if n + p0 + p1 < k:
        raise NetFormatError(f"{where}: window {k} does not fit the padded input size {n + p0 + p1}")
    if max(n + p0 + p1, k) > MAX_SIZE:
        raise NetFormatError(f"{where}: padded input {n + p0 + p1} or window {k} is beyond {MAX_SIZE}, the "
                             f"largest size torch's convolutions take (check pad, dilate, window)")  # fmt: skip
    return (n + p0 + p1 - k) // s + 1


# --- whole-network checks ------------------------------------------------------------------------
def infer_shapes(spec: NetSpec, image_hw: tuple[int, int] | None = (480, 640), in_channels: int = 3) -> list[Shape]:
    """Output (H, W, C) of every layer, checking that weight shapes chain (``vl_simplenn`` rules).
    ``image_hw=None`` checks channels only (spatial sizes stay ``None``)."""
    shape: Shape = (*(image_hw or (None, None)), in_channels)
    out = []
    for i, layer in enumerate(spec.layers):
        rule = layer_type(layer.type, layer.where(i)).shape
        if rule is not None:
            shape = rule(layer, shape, layer.where(i))
        out.append(shape)
    return out


def layer_bytes(spec: NetSpec, image_hw: tuple[int, int]) -> list[int]:
    """The memory one image needs in each layer: its input plus output, float32."""
    shapes = [(*image_hw, 3)] + infer_shapes(spec, image_hw)
    sizes = [a * b * c for a, b, c in shapes]
    return [4 * (x + y) for x, y in zip(sizes, sizes[1:])]


def _fits(spec: NetSpec, image_hw: tuple[int, int]) -> bool:
    try:
        infer_shapes(spec, image_hw)
    except NetFormatError:
        return False
    return True


def _least(ok: Callable[[int], bool]) -> int:
    lo, hi = 1, MAX_SIDE  # ok(MAX_SIDE) holds; fitting grows with the side (window_out)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


def smallest_image(spec: NetSpec) -> tuple[int, int]:
    """The smallest (H, W) whose windows fit every layer (H and W independently); a network that no
    image up to :data:`MAX_SIDE` a side goes through is refused, naming the layer."""
    try:
        infer_shapes(spec, (MAX_SIDE, MAX_SIDE))
    except NetFormatError as exc:
        raise NetFormatError(f"no image up to {MAX_SIDE} pixels a side goes through the network: {exc}") from None
    return _least(lambda h: _fits(spec, (h, MAX_SIDE))), _least(lambda w: _fits(spec, (MAX_SIDE, w)))


def output_dim(spec: NetSpec) -> int | None:
    """The descriptor dimension, or None when it depends on the image size."""
    h, w, c = infer_shapes(spec, image_hw=None)[-1]
    return None if h is None else h * w * c


def infer_method(spec: NetSpec) -> str:
    """The ``addLayers`` method string (e.g. ``vlad_preL2_intra``) the layers correspond to."""
    if any(l.type == TORCH_VLAD for l in spec.layers):
        return "netvlad"  # Nanne's / STML's whole module (its normalisations inside): no addLayers string
    entries = [layer_type(l.type) for l in spec.layers]
    aggs = [e for e in entries if e.token]
    if not aggs:
        return ""
    names = {l.name for l in spec.layers}
    pre = ["preL2"] if "preL2" in names else []
    if aggs[0].alpha is None:  # addLayers' own examples: max, avg, preL2_max
        return "_".join(pre + [aggs[0].token])
    return "_".join([aggs[0].token] + pre + (["intra"] if "vlad:intranorm" in names else []))


def canonicalise(layer: LayerSpec, where: str = "", previous: LayerSpec | None = None) -> None:
    """Fill MatConvNet's defaults (``vl_simplenn_tidy``) and restore MATLAB shapes of one layer, in place
    (:func:`validate` calls it on copies)."""
    entry = layer_type(layer.type, where)
    if len(layer.weights) not in entry.n_weights:
        raise NetFormatError(
            f"{where}: {layer.type} layer has {len(layer.weights)} weight arrays; "
            f"expected {' or '.join(map(str, entry.n_weights))}"
        )
    if entry.canonical is not None:
        entry.canonical(layer, where, previous)
    for j, w in enumerate(layer.weights):
        kind = np.asarray(w).dtype.kind
        if kind not in "biuf":
            what = "complex values" if kind == "c" else f"{np.asarray(w).dtype} values"
            raise NetFormatError(f"{where}: weights{{{j + 1}}} holds {what}; expected real numbers")
        if not np.isfinite(w).all():
            raise NetFormatError(f"{where}: weights{{{j + 1}}} holds NaN or infinite values")
    for key, mults in layer.multipliers.items():
        if len(mults) != len(layer.weights):
            raise NetFormatError(f"{where}: {key} has {len(mults)} values for {len(layer.weights)} weight arrays")


def _contents(layers: list[LayerSpec]) -> tuple:
    """Every object a layer is made of, in order, for the identity check of :attr:`NetSpec.validated`."""
    out: list = [layers]
    for l in layers:
        out += [l, l.type, l.name, l.weights, *l.weights, l.params, l.multipliers]
        out += [x for fields in (l.params, l.multipliers) for item in fields.items() for x in item]
    return tuple(out)


def validate(spec: NetSpec) -> NetSpec:
    """``vl_simplenn_tidy`` and the checks: a new, validated spec (:attr:`NetSpec.validated`) with
    MatConvNet's defaults filled and MATLAB shapes restored in copies of the layers (the weight arrays
    are shared, ``spec`` is left as it is), every layer checked and the shapes chained. Raises
    :class:`NetFormatError` naming the layer. Always checks; :func:`ensure_validated` skips a validated spec."""
    if not spec.layers:
        raise NetFormatError("the network has no layers")
    layers: list[LayerSpec] = []
    for i, l in enumerate(spec.layers):
        layer = LayerSpec(
            l.type, l.name, list(l.weights), dict(l.params), {k: list(v) for k, v in l.multipliers.items()}
        )
        canonicalise(layer, layer.where(i), layers[-1] if layers else None)
        layers.append(layer)
    out = NetSpec(layers, dict(spec.meta))
    infer_shapes(out, image_hw=None)
    smallest_image(out)
    out._checked = _contents(layers)
    return out


def ensure_validated(spec: NetSpec) -> NetSpec:
    """``spec`` itself when :func:`validate` made it and it is unchanged, else ``validate(spec)``: what
    ``SimpleNN`` and ``save_converted`` call, so a load followed by either validates once."""
    return spec if spec.validated else validate(spec)
