"""Write a :class:`NetSpec` as a MatConvNet SimpleNN ``net`` variable that MATLAB and our reader load.

Encodings (``encoding=``):

* ``"struct"`` (default): custom layers struct-ified as ``struct(obj)`` gives them (the hloc /
  netvlad_tf layout), MAT v5 (``version="v7"``) or HDF5 (``version="v7.3"``).
* ``"classdef"``: custom layers as MATLAB objects of the NetVLAD classes with their properties,
  as MATLAB itself writes them when the class has no ``saveobj``.
* ``"saveobj"``: custom layers as objects carrying the struct their ``saveobj`` returns
  (``relja_saveobj``), as the NetVLAD release files store ``layerVLAD`` and ``layerWholeL2Normalize``.

Layer fields follow ``vl_simplenn_tidy`` (reference §5.6) and the NetVLAD class properties
(parity README, 'Custom layers in net.mat').
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..io_utils import atomic_file
from .spec import CONV, NORMALIZE, POOL, RELU, VLAD, VLADV2, NetSpec, LayerSpec

ENCODINGS = ("struct", "classdef", "saveobj")
VERSIONS = ("v7", "v7.3")


def _cell(items: list) -> np.ndarray:
    arr = np.empty((1, len(items)), dtype=object)
    for i, v in enumerate(items):
        arr[0, i] = v
    return arr


def _struct(fields: dict[str, Any]) -> np.ndarray:
    arr = np.empty((1, 1), dtype=[(k, object) for k in fields])
    for k, v in fields.items():
        arr[0, 0][k] = v
    return arr


def _num(v) -> np.ndarray:
    return np.atleast_2d(np.asarray(v, dtype=np.float64))


def _str(s: str) -> np.ndarray:
    return np.array([s])


def _empty() -> np.ndarray:
    return np.zeros((0, 0))


def _weights(layer: LayerSpec) -> np.ndarray:
    ws = []
    for w in layer.weights:
        w = np.asarray(w, np.float32)
        ws.append(w.reshape(-1, 1) if w.ndim == 1 else w)  # biases are Cout x 1
    return _cell(ws)


def layer_fields(layer: LayerSpec) -> tuple[dict[str, Any], str | None]:
    """MATLAB fields of one layer, and the NetVLAD class name for custom layers (else None)."""
    p = layer.params
    if layer.type == CONV:
        return {"name": _str(layer.name), "type": _str("conv"), "weights": _weights(layer),
                "pad": _num([p["pad"]]), "stride": _num([p["stride"]]), "dilate": _num([p["dilate"]]),
                "opts": _cell([]), "precious": np.array([[False]])}, None
    if layer.type == POOL:
        return {"name": _str(layer.name), "type": _str("pool"), "method": _str(p["method"]),
                "pool": _num([p["pool"]]), "stride": _num([p["stride"]]), "pad": _num([p["pad"]]),
                "opts": _cell([]), "precious": np.array([[False]])}, None
    if layer.type == RELU:
        return {"name": _str(layer.name), "type": _str("relu"), "leak": _num(p["leak"]),
                "precious": np.array([[False]])}, None
    if layer.type == NORMALIZE:
        return {"name": _str(layer.name), "type": _str("normalize"), "param": _num([p["param"]]),
                "precious": np.array([[False]])}, None
    if layer.type in (VLAD, VLADV2):
        d, k = p["D"], p["K"]
        return {"type": _str("custom"), "name": _str(layer.name), "K": _num(k), "D": _num(d),
                "vladDim": _num(d * k), "weights": _weights(layer), "momentum": _empty(),
                "learningRate": _empty(), "weightDecay": _empty(), "precious": np.array([[False]])}, layer.type
    return {"type": _str("custom"), "name": _str(layer.name), "precious": np.array([[False]])}, layer.type


def net_variable(spec: NetSpec, encoding: str = "struct") -> np.ndarray:
    """The MATLAB value of ``net`` as numpy structs / cells (and mat-io objects)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    layers = []
    for layer in spec.layers:
        fields, cls = layer_fields(layer)
        if cls is None or encoding == "struct":
            layers.append(_struct(fields))
            continue
        from matio.utils.matclass import MatlabOpaque

        layers.append(MatlabOpaque({"any": _struct(fields)} if encoding == "saveobj" else fields, cls))
    meta = spec.meta
    avg = meta.get("averageImage")
    norm = {"averageImage": np.asarray(avg, np.float32) if avg is not None else np.zeros((1, 1, 3), np.float32)}
    meta_fields = {"normalization": _struct(norm)}
    for key in ("netID", "sessionID"):
        if meta.get(key) is not None:
            meta_fields[key] = _str(str(meta[key]))
    meta_fields["epoch"] = _num(meta.get("epoch", 0) or 0)
    return _struct({"layers": _cell(layers), "meta": _struct(meta_fields)})


def write_net(spec: NetSpec, path: str | os.PathLike, version: str = "v7", encoding: str = "struct",
              compress: bool = False) -> Path:
    """Write ``net`` to ``path`` atomically. ``version`` is ``"v7"`` (MAT v5 container) or ``"v7.3"``."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    path = Path(path)
    net = net_variable(spec, encoding)
    with atomic_file(path, suffix=".mat") as tmp:
        if version == "v7" and encoding == "struct":
            import scipy.io

            scipy.io.savemat(tmp, {"net": net}, format="5", do_compression=compress, oned_as="column")
        else:
            from matio import save_to_mat

            classes = sorted({l.type for l in spec.layers if layer_fields(l)[1]}) if encoding == "saveobj" else []
            save_to_mat(str(tmp), {"net": net}, version=version, saveobj_classes=classes,
                        do_compression=compress)
    return path
