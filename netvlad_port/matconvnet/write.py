"""Write a :class:`NetSpec` as a MatConvNet SimpleNN ``net`` variable that MATLAB and our reader load.

Encodings (``encoding=``):

* ``"struct"`` (default): custom layers struct-ified as ``struct(obj)`` gives them (the hloc /
  netvlad_tf layout), MAT v5 (``version="v7"``) or HDF5 (``version="v7.3"``).
* ``"classdef"``: custom layers as MATLAB objects of the NetVLAD classes with their properties,
  as MATLAB itself writes them when the class has no ``saveobj``.
* ``"saveobj"``: custom layers as objects carrying the struct their ``saveobj`` returns
  (``relja_saveobj``), as the NetVLAD release files store ``layerVLAD`` and ``layerWholeL2Normalize``.

Each layer's fields come from its registered :class:`~.spec.LayerType` (``vl_simplenn_tidy``'s
fields and the NetVLAD class properties: [docs/matlab.md#simplenn-struct](../../docs/matlab.md#simplenn-struct)).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NetFormatError
from ..io_utils import atomic_file
from .mat import cell, num, string, struct
from .spec import LayerSpec, NetSpec, layer_type

ENCODINGS = ("struct", "classdef", "saveobj")
VERSIONS = ("v7", "v7.3")


def layer_fields(layer: LayerSpec) -> tuple[dict[str, Any], str | None]:
    """MATLAB fields of one layer, and its class name for custom layers (else None)."""
    entry = layer_type(layer.type)
    if entry.fields is None:
        raise NetFormatError(
            f"layer '{layer.name}' ({layer.type}) has no MATLAB counterpart: a MatConvNet .mat cannot hold it"
        )
    fields = entry.fields(layer)
    fields.update({k: num([v]) for k, v in layer.multipliers.items()})  # 1 x J, as netPrepareForTrain sets them
    return fields, (layer.type if entry.custom else None)


def net_variable(spec: NetSpec, encoding: str = "struct") -> np.ndarray:
    """The MATLAB value of ``net`` as numpy structs / cells (and mat-io objects)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    layers = []
    for layer in spec.layers:
        fields, cls = layer_fields(layer)
        if cls is None or encoding == "struct":
            layers.append(struct(fields))
            continue
        from matio.utils.matclass import MatlabOpaque

        layers.append(MatlabOpaque({"any": struct(fields)} if encoding == "saveobj" else fields, cls))
    meta = spec.meta
    avg = meta.get("averageImage")
    norm = {"averageImage": np.asarray(avg, np.float32) if avg is not None else np.zeros((1, 1, 3), np.float32)}
    meta_fields = {"normalization": struct(norm)}
    for key in ("netID", "sessionID"):
        if meta.get(key) is not None:
            meta_fields[key] = string(str(meta[key]))
    meta_fields["epoch"] = num(meta.get("epoch", 0) or 0)
    return struct({"layers": cell(layers), "meta": struct(meta_fields)})


def write_net(
    spec: NetSpec, path: str | os.PathLike, version: str = "v7", encoding: str = "struct", compress: bool = False
) -> Path:
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
            save_to_mat(str(tmp), {"net": net}, version=version, saveobj_classes=classes, do_compression=compress)
    return path
