"""Read MatConvNet SimpleNN networks from MAT files (MATLAB ``load(fn, 'net')``).

One reader for the three encodings users hold ([docs/formats.md#mat-files](../../docs/formats.md#mat-files)):

* MAT v5/v7 with plain structs (hloc's struct-ified ``Pitts30K_struct.mat``, our ``export-mat``);
* MAT v7.3 / HDF5, e.g. training checkpoints ``*_latest.mat`` holding ``net, obj, opts, auxData``;
* the release files whose custom layers are MATLAB classdef objects (``layerVLAD``, ...), either
  with their properties or with the struct their ``saveobj`` returned.

``mat-io`` decodes all three into numpy values; this module turns those into a :class:`NetSpec`.
MatConvNet model files saved with ``-struct`` (``layers`` and ``meta`` as top-level variables,
e.g. ``imagenet-vgg-verydeep-16.mat``) are read too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NetFormatError
from .mat5 import check_mat5
from .spec import CONV, LAYER_TYPES, TRAINING_MULTIPLIERS, LayerSpec, NetSpec, validate

# Fields that only matter to MATLAB's training loop or memory management.
_TRAINING_FIELDS = {"type", "name", "weights", "momentum", "learningRate", "weightDecay", "precious", "opts"}


def to_python(value: Any) -> Any:
    """MATLAB value (as mat-io returns it) -> dict / list / str / ndarray.

    Structs become dicts (struct arrays: lists of dicts), cells become lists in MATLAB's
    column-major order, char arrays become str, classdef objects become dicts of their
    properties with the class name under ``"__class__"``.
    """
    from matio.utils.matclass import MatlabOpaque, MatlabOpaqueArray

    if isinstance(value, MatlabOpaque):
        props = value.properties if isinstance(value.properties, dict) else {}
        if set(props) == {"any"}:  # the object was saved through its saveobj method
            props = to_python(props["any"])
            props = props if isinstance(props, dict) else {}
        else:
            props = {k: to_python(v) for k, v in props.items()}
        return {**props, "__class__": str(value.classname)}
    if isinstance(value, MatlabOpaqueArray):
        items = [to_python(v) for v in np.asarray(value).ravel(order="F")]
        return items[0] if len(items) == 1 else items
    if isinstance(value, np.ndarray):
        if value.dtype.names:  # struct
            items = [{k: to_python(rec[k]) for k in value.dtype.names} for rec in value.ravel(order="F")]
            return items[0] if len(items) == 1 else items
        if value.dtype.kind in "US" or value.dtype.kind == "T":
            rows = [str(s) for s in value.ravel(order="F")]
            return (
                rows[0]
                if len(rows) == 1
                else ("".join(rows) if value.ndim <= 1 and all(len(r) == 1 for r in rows) else rows)
            )
        if value.dtype == object:
            return [to_python(v) for v in value.ravel(order="F")]
        return value
    if isinstance(value, (str, bytes)):
        return value.decode() if isinstance(value, bytes) else value
    return value


def _load_variables(path: Path) -> dict[str, Any]:
    from matio import load_from_mat, whosmat

    if not path.exists():
        raise NetFormatError(f"{path}: no such file")
    if path.is_dir():
        raise NetFormatError(f"{path}: is a folder, not a .mat file")
    check_mat5(path)  # a damaged v5 file must not reach the compiled reader
    try:
        names = set(whosmat(str(path)))
    except Exception as exc:  # mat-io raises many types on garbage
        raise NetFormatError(f"{path}: not a readable MAT file ({type(exc).__name__}: {exc})") from None
    wanted = ["net"] if "net" in names else [n for n in ("layers", "meta", "normalization") if n in names]
    if "net" not in names and "layers" not in names:
        raise NetFormatError(
            f"{path}: the MAT file has no variable 'net' (nor top-level 'layers'); "
            f"it holds: {', '.join(sorted(names)) or 'nothing'}"
        )
    try:
        data = load_from_mat(str(path), variable_names=wanted)
    except Exception as exc:
        raise NetFormatError(
            f"{path}: cannot read MAT file, it may be truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from None
    return {k: to_python(v) for k, v in data.items() if not k.startswith("__")}


def _custom_class(d: dict, where: str) -> str:
    """Which registered custom class a layer is: its class name, or for a struct-ified copy the first
    type that recognises its fields (parity README, 'Custom layers in net.mat')."""
    cls = d.get("__class__")
    entry = LAYER_TYPES.get(cls) if cls else None
    if entry is not None and entry.custom:
        return entry.name
    for plugins in (False, True):  # a plug-in's types only when no built-in one recognises it
        for name, entry in LAYER_TYPES.items(plugins):
            if entry.custom and entry.recognise is not None and entry.recognise(d):
                return name
    raise NetFormatError(f"unsupported layer type '{cls or 'custom'}' at {where}")


def _layer(d: Any, index: int) -> LayerSpec:
    where = f"layer {index + 1}"
    if not isinstance(d, dict):
        raise NetFormatError(f"{where}: expected a struct or object, found {type(d).__name__}")
    name = d.get("name", f"layer{index + 1}")
    name = name if isinstance(name, str) and name else f"layer{index + 1}"
    where = f"layer {index + 1} ('{name}')"
    t = d.get("type")
    if d.get("__class__") and d["__class__"] in LAYER_TYPES:
        t = "custom"
    if t is None or (isinstance(t, str) and not t):
        raise NetFormatError(f"{where}: the layer has no 'type' field")
    if not isinstance(t, str):
        raise NetFormatError(f"{where}: 'type' is not a string ({t!r})")
    t = _custom_class(d, where) if t == "custom" else (LAYER_TYPES.name(t) if t in LAYER_TYPES else t)
    weights = d.get("weights", [])
    if isinstance(weights, np.ndarray):
        weights = [] if weights.size == 0 else [weights]
    weights = [np.asarray(w) for w in (weights or [])]
    if t == CONV and len(weights) == 2 and weights[1].size == 0:
        weights = weights[:1]
    entry = LAYER_TYPES.get(t)
    if entry is not None and entry.read is not None:
        params = entry.read({**d, "weights": weights}, where)
    else:
        params = {k: v for k, v in d.items() if k not in _TRAINING_FIELDS and not k.startswith("__")}
    training = {k: [float(x) for x in np.ravel(d[k])] for k in TRAINING_MULTIPLIERS if np.size(d.get(k, [])) > 0}
    return LayerSpec(type=t, name=name, weights=weights, params=params, multipliers=training)


def _meta(variables: dict) -> dict:
    if "net" in variables:
        net = variables["net"]
        if not isinstance(net, dict):
            raise NetFormatError("variable 'net' is not a struct")
        meta = net.get("meta", {})
    else:
        meta = variables.get("meta", {})
    meta = dict(meta) if isinstance(meta, dict) else {}
    norm = meta.pop("normalization", None) or variables.get("normalization") or {}
    out = {k: meta[k] for k in ("netID", "sessionID", "epoch") if k in meta}
    if isinstance(out.get("epoch"), np.ndarray):
        out["epoch"] = int(np.asarray(out["epoch"]).ravel()[0]) if out["epoch"].size else 0
    if isinstance(norm, dict) and norm.get("averageImage") is not None:
        avg = norm["averageImage"]
        if np.asarray(avg).dtype.kind not in "biuf":
            raise NetFormatError(f"meta.normalization.averageImage: expected numbers, got {avg!r:.60}")
        out["averageImage"] = np.asarray(avg, np.float32)
    return out


def read_net(path: str | os.PathLike, crop_at: str | None = None) -> NetSpec:
    """Read ``net`` from a MatConvNet ``.mat`` file of any encoding and validate it.
    ``crop_at``: keep layers up to and including that name (``relja_cropToLayer``), before
    validation, so the classifier layers of ImageNet models (softmax, dropout) do not matter."""
    path = Path(path)
    variables = _load_variables(path)
    layers = variables["net"].get("layers") if isinstance(variables.get("net"), dict) else variables.get("layers")
    if isinstance(layers, dict):
        layers = [layers]
    if not isinstance(layers, list) or not layers:
        raise NetFormatError(f"{path}: net.layers is missing or empty")
    if crop_at:
        hits = [i for i, d in enumerate(layers) if isinstance(d, dict) and d.get("name") == crop_at]
        if len(hits) != 1:
            raise NetFormatError(
                f"{path}: layer name '{crop_at}' matches {len(hits)} layers (relja_whichLayer needs exactly one)"
            )
        layers = layers[: hits[0] + 1]
    try:
        spec = validate(NetSpec(layers=[_layer(d, i) for i, d in enumerate(layers)], meta=_meta(variables)))
    except NetFormatError as exc:
        raise NetFormatError(f"{path}: {exc}") from None
    return spec
