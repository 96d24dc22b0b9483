"""Build networks as NetVLAD's MATLAB code does: ``loadNet`` and ``addLayers``
([docs/matlab.md#loadnet](../docs/matlab.md#loadnet), [#addlayers](../docs/matlab.md#addlayers)).

Both work on a :class:`NetSpec` (MATLAB layout), so the result can be converted, exported or loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .errors import NetVladPortError
from .layers.netvlad import vlad_alpha, vladv2_alpha  # noqa: F401  (addLayers' alpha rules, re-exported)
from .matconvnet.spec import (
    LAYER_TYPES,
    NORMALIZE,
    POOL,
    RELU,
    TORCH_VLAD,
    WHOLE_L2,
    LayerSpec,
    NetSpec,
    infer_shapes,
    validate,
)
from .registry import Registry

NET_FILES = {
    "vd16": "imagenet-vgg-verydeep-16.mat",
    "vd19": "imagenet-vgg-verydeep-19.mat",
    "caffe": "imagenet-caffe-ref.mat",
    "places": "places-caffe.mat",
}
DEFAULT_K = 64


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


def load_net(
    net_id: str = "vd16", layer_name: str | None = "conv5_3", weights: str | os.PathLike | None = None
) -> NetSpec:
    """MATLAB ``loadNet(netID, layerName)``: the MatConvNet ImageNet model cropped at ``layer_name``
    (kept, no ReLU after it), max pools moved before their ReLUs, ``sessionID =
    <netID>_offtheshelf_<layerName>``, epoch 0. ``weights`` defaults to ``NET_FILES[net_id]``."""
    from .matconvnet.read import read_net

    if net_id not in NET_FILES:
        raise NetVladPortError(f"unknown netID {net_id!r}: expected one of {', '.join(NET_FILES)}")
    spec = read_net(weights or NET_FILES[net_id], crop_at=layer_name)
    spec.layers = swap_layers_for_efficiency(spec.layers)
    spec.meta = {k: v for k, v in spec.meta.items() if k == "averageImage"}
    spec.meta.update(
        netID=net_id, sessionID=f"{net_id}_offtheshelf" + (f"_{layer_name}" if layer_name else ""), epoch=0
    )
    return spec


def add_layers(
    spec: NetSpec,
    method: str = "vlad_preL2_intra",
    clusters: np.ndarray | None = None,
    train_descs: np.ndarray | None = None,
    db_name: str = "",
    db_train=None,
    k: int = DEFAULT_K,
    **cluster_kwargs,
) -> NetSpec:
    """MATLAB ``addLayers(net, opts, dbTrain)`` for every method token combination (``vlad`` /
    ``vladv2`` / ``max`` / ``avg`` with ``preL2``, ``intra``; token order free). VLAD layers need
    ``clusters`` (D x K) and ``train_descs`` (D x N) for alpha, or ``db_train`` to compute them with
    :func:`netvlad_port.clusters.get_clusters`."""
    tokens = method.split("_")
    types = aggregation_types(tokens)
    unknown = set(tokens) - {"preL2", "intra"} - set(types)
    if unknown:
        raise NetVladPortError(f"Unsupported options (method={method}): {', '.join(sorted(unknown))}")
    aggs = [t for t in tokens if t in types]
    if len(aggs) != 1:
        raise NetVladPortError(f'Unsupported method "{method}": exactly one of {", ".join(types)}')
    if "intra" in tokens and types[aggs[0]].alpha is None:
        raise NetVladPortError(f"Unsupported options (method={method}): intra")
    layers = list(spec.layers)
    d = infer_shapes(spec, image_hw=None)[-1][2]
    meta = dict(spec.meta)
    out = NetSpec(layers, meta)
    if "preL2" in tokens:
        layers.append(LayerSpec(NORMALIZE, "preL2", [], {"param": [2 * d, 1e-12, 1, 0.5]}))
    entry = types[aggs[0]]
    if entry.alpha is None:
        layers.append(entry.aggregate(d, None, None))
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
        if db_name:
            meta["sessionID"] = f"{meta.get('sessionID', '')}_{db_name}"
        layers.append(entry.aggregate(d, clusters, entry.alpha(clusters, train_descs)))
        if "intra" in tokens:
            layers.append(LayerSpec(NORMALIZE, "vlad:intranorm", [], {"param": [2 * d, 1e-12, 1, 0.5]}))
    layers.append(LayerSpec(WHOLE_L2, "postL2"))
    meta["sessionID"] = f"{meta.get('sessionID', '')}_{method}"
    meta["epoch"] = 0
    return validate(out)


def aggregation_types(tokens=()) -> dict:
    """``addLayers`` method token -> the registered layer type it appends (vlad, vladv2, max, avg, ...).
    Plug-ins are loaded only when one of ``tokens`` is not a built-in's (or when ``tokens`` is empty)."""
    types = {e.token: e for _, e in LAYER_TYPES.items(plugins=False) if e.token}
    if not tokens or set(tokens) - {"preL2", "intra"} - set(types):
        types = {e.token: e for _, e in LAYER_TYPES.items() if e.token}
    return types


@dataclass(frozen=True)
class Attention:
    """An ``--attention`` name: the layer type it inserts, that layer's params and its place among the
    modules (``order``: modules run in ascending order whatever the listing; None: after them, as listed)."""

    name: str
    layer_type: str
    params: dict = field(default_factory=dict)
    order: int | None = None


ATTENTION: Registry[Attention] = Registry("attention module", builtins="netvlad_port.networks", key=str.lower)


def register_attention(
    name: str, layer_type: str, params: dict | None = None, replace: bool = False, order: int | None = None
) -> Attention:
    return ATTENTION.register(name, Attention(name, layer_type, dict(params or {}), order), replace=replace)


def insert_attention(spec: NetSpec, kinds) -> NetSpec:
    """The network with attention modules (``--attention deattention-v1,se``) between the encoder and the
    aggregation: before the aggregation layer and the preL2 normalisation in front of it (where STML places
    them, docs/stml.md#modules), in their registered ``order`` (STML's fixed order, ``tasks/train.py:54-58``
    and ``tasks/common.py:31-57``: de-attention, SE, BAM, CBAM, CRN) whatever the listing. The new modules
    start from their layer type's initialisation (empty weights)."""
    kinds = list(kinds)
    ranks = [ATTENTION[k].order for k in kinds]
    kinds = [kinds[i] for i in sorted(range(len(kinds)), key=lambda i: (ranks[i] is None, ranks[i] or 0, i))]
    entries = [ATTENTION[k] for k in kinds]
    aggregators = {e.name for e in aggregation_types().values()} | {TORCH_VLAD}
    at = next((i for i, layer in enumerate(spec.layers) if layer.type in aggregators), None)
    if at is None:
        raise NetVladPortError("--attention: the network has no aggregation layer (NetVLAD, max, avg, GeM)")
    while at > 0 and spec.layers[at - 1].type == NORMALIZE:
        at -= 1
    present = [layer.name for layer in spec.layers if layer.type in {a.layer_type for _, a in ATTENTION.items()}]
    if present:
        raise NetVladPortError(f"--attention: the network already has attention layers ({', '.join(present)})")
    new = [LayerSpec(a.layer_type, f"{k}:{i + 1}" if kinds.count(k) > 1 else k, [], dict(a.params))
           for i, (k, a) in enumerate(zip(kinds, entries))]  # fmt: skip
    return validate(NetSpec(layers=spec.layers[:at] + new + spec.layers[at:], meta=dict(spec.meta)))
