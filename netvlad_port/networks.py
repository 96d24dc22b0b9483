"""Build networks as NetVLAD's MATLAB code does: ``loadNet`` and ``addLayers`` (reference §2.1-2.2, §3).

Both work on a :class:`NetSpec` (MATLAB layout), so the result can be converted, exported or loaded.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .errors import NetVladPortError
from .matconvnet.spec import (NORMALIZE, POOL, RELU, TOTAL_AVG, TOTAL_MAX, VLAD, VLADV2, WHOLE_L2, LayerSpec,
                              NetSpec, infer_shapes, validate)

NET_FILES = {"vd16": "imagenet-vgg-verydeep-16.mat", "vd19": "imagenet-vgg-verydeep-19.mat",
             "caffe": "imagenet-caffe-ref.mat", "places": "places-caffe.mat"}
DEFAULT_K = 64
ALPHA_TARGET = -math.log(0.01)  # addLayers: alpha = -log(0.01) / mean(dot1 - dot2)


def swap_layers_for_efficiency(layers: list[LayerSpec]) -> list[LayerSpec]:
    """``relja_swapLayersForEfficiency``: every (relu, max pool) pair becomes (max pool, relu)."""
    out, i = list(layers), 0
    while i < len(out) - 1:
        if out[i].type == RELU and out[i + 1].type == POOL and out[i + 1].params.get("method", "max") == "max":
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2
        else:
            i += 1
    return out


def load_net(net_id: str = "vd16", layer_name: str | None = "conv5_3",
             weights: str | os.PathLike | None = None) -> NetSpec:
    """MATLAB ``loadNet(netID, layerName)``: the MatConvNet ImageNet model cropped at ``layer_name``
    (kept, no ReLU after it), max pools moved before their ReLUs, ``sessionID =
    <netID>_offtheshelf_<layerName>``, epoch 0. ``weights`` defaults to ``NET_FILES[net_id]``."""
    from .matconvnet.read import read_net

    if net_id not in NET_FILES:
        raise NetVladPortError(f"unknown netID {net_id!r}: expected one of {', '.join(NET_FILES)}")
    spec = read_net(weights or NET_FILES[net_id], crop_at=layer_name)
    spec.layers = swap_layers_for_efficiency(spec.layers)
    spec.meta = {k: v for k, v in spec.meta.items() if k == "averageImage"}
    spec.meta.update(netID=net_id, sessionID=f"{net_id}_offtheshelf" + (f"_{layer_name}" if layer_name else ""),
                     epoch=0)
    return spec


def _l2_cols(a: np.ndarray) -> np.ndarray:
    """``relja_l2normalize_col``: columns over (norm + 1e-12)."""
    return a / (np.sqrt((a.astype(np.float64) ** 2).sum(0)) + 1e-12).astype(a.dtype)


def vlad_alpha(clusters: np.ndarray, train_descs: np.ndarray) -> float:
    """addLayers' alpha for ``layerVLAD``: -log(0.01) / mean(top1 - top2 dot with the L2-normalised
    centres), over the training descriptors (D x N)."""
    dots = _l2_cols(clusters).T.astype(np.float64) @ train_descs.astype(np.float64)  # K x N
    top2 = -np.partition(-dots, 1, axis=0)[:2]
    return float(ALPHA_TARGET / np.mean(top2[0] - top2[1]))


def vladv2_alpha(clusters: np.ndarray, train_descs: np.ndarray) -> float:
    """addLayers' alpha for ``layerVLADv2``: -log(0.01) / mean(d2^2 - d1^2) to the two nearest centres."""
    c, x = clusters.astype(np.float64), train_descs.astype(np.float64)
    d2 = (x ** 2).sum(0)[None] - 2 * c.T @ x + (c ** 2).sum(0)[:, None]
    near = np.partition(d2, 1, axis=0)[:2]
    return float(ALPHA_TARGET / np.mean(near[1] - near[0]))


def add_layers(spec: NetSpec, method: str = "vlad_preL2_intra", clusters: np.ndarray | None = None,
               train_descs: np.ndarray | None = None, db_name: str = "", db_train=None, k: int = DEFAULT_K,
               **cluster_kwargs) -> NetSpec:
    """MATLAB ``addLayers(net, opts, dbTrain)`` for every method token combination (``vlad`` /
    ``vladv2`` / ``max`` / ``avg`` with ``preL2``, ``intra``; token order free). VLAD layers need
    ``clusters`` (D x K) and ``train_descs`` (D x N) for alpha, or ``db_train`` to compute them with
    :func:`netvlad_port.clusters.get_clusters`."""
    tokens = method.split("_")
    known = {"preL2", "max", "avg", "vlad", "vladv2", "intra"}
    if set(tokens) - known:
        raise NetVladPortError(f"Unsupported options (method={method}): {', '.join(sorted(set(tokens) - known))}")
    aggs = [t for t in tokens if t in ("max", "avg", "vlad", "vladv2")]
    if len(aggs) != 1:
        raise NetVladPortError(f'Unsupported method "{method}": exactly one of vlad, vladv2, max, avg')
    if "intra" in tokens and aggs[0] not in ("vlad", "vladv2"):
        raise NetVladPortError(f"Unsupported options (method={method}): intra")
    layers = list(spec.layers)
    d = infer_shapes(spec, image_hw=None)[-1][2]
    meta = dict(spec.meta)
    out = NetSpec(layers, meta)
    if "preL2" in tokens:
        layers.append(LayerSpec(NORMALIZE, "preL2", [], {"param": [2 * d, 1e-12, 1, 0.5]}))
    agg = aggs[0]
    if agg in ("max", "avg"):
        layers.append(LayerSpec(TOTAL_MAX if agg == "max" else TOTAL_AVG, f"{agg}:core"))
    else:
        if clusters is None:
            if db_train is None:
                raise NetVladPortError(f"method {method} needs clusters (and training descriptors) or db_train")
            from .clusters import get_clusters

            clusters, train_descs = get_clusters(out, db_train, k=k, **cluster_kwargs)
            db_name = db_name or db_train.name
        if train_descs is None:
            raise NetVladPortError("addLayers needs the training descriptors (D x N) to set alpha")
        clusters = np.asarray(clusters, np.float32)
        if clusters.shape[0] != d:
            raise NetVladPortError(f"clusters are {clusters.shape[0]}-D but the network outputs {d} channels")
        kk = clusters.shape[1]
        if db_name:
            meta["sessionID"] = f"{meta.get('sessionID', '')}_{db_name}"
        if agg == "vladv2":
            a = vladv2_alpha(clusters, train_descs)
            w = [(a * 2 * clusters)[None, None], (-a * (clusters.astype(np.float64) ** 2).sum(0))[None],
                 (-clusters)[None, None]]
            layers.append(LayerSpec(VLADV2, "vlad:core", [np.asarray(x, np.float32) for x in w], {"K": kk, "D": d}))
        else:
            a = vlad_alpha(clusters, train_descs)
            w = [(a * _l2_cols(clusters))[None, None], (-clusters)[None, None]]
            layers.append(LayerSpec(VLAD, "vlad:core", [np.asarray(x, np.float32) for x in w], {"K": kk, "D": d}))
        if "intra" in tokens:
            layers.append(LayerSpec(NORMALIZE, "vlad:intranorm", [], {"param": [2 * d, 1e-12, 1, 0.5]}))
    layers.append(LayerSpec(WHOLE_L2, "postL2"))
    meta["sessionID"] = f"{meta.get('sessionID', '')}_{method}"
    meta["epoch"] = 0
    validate(out)
    return out
