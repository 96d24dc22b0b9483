"""Networks with the real NetVLAD layer structure and random weights, for tests, demos and benchmarks.

The layer lists are what ``loadNet`` + ``addLayers`` + ``addPCA`` produce
(docs/matlab.md#loadnet, #addlayers, #addpca):
the MatConvNet backbone cropped at its last conv (no ReLU after it), each max pool moved before
its ReLU (``relja_swapLayersForEfficiency``), then preL2, the aggregation layer, intra-norm, postL2
and optionally WPCA + finalL2. ``width`` scales the channel counts (1.0 is the real VGG16: 35
layers, 4096-D with WPCA); VLAD weights are built as ``addLayers`` builds them from centres.
"""

from __future__ import annotations

import math

import numpy as np

from .matconvnet import mat
from .matconvnet.spec import CONV, NORMALIZE, POOL, RELU, WHOLE_L2, LayerSpec, NetSpec, infer_shapes, validate
from .networks import aggregation_types

# MatConvNet's VGG/CaffeNet mean (RGB), imported with --average-value ([docs/matlab.md#simplenn-struct]).
VGG_MEAN_RGB = (123.68, 116.779, 103.939)
# VGG blocks: number of convs and width per block; the last layer kept is the last conv.
VGG_BLOCKS = {"vd16": (2, 2, 3, 3, 3), "vd19": (2, 2, 4, 4, 4)}
VGG_WIDTHS = (64, 128, 256, 512, 512)
ARCHS = ("vd16", "vd19", "caffe")
METHODS = ("vlad_preL2_intra", "vlad_preL2", "vladv2_preL2_intra", "vlad", "max", "avg", "preL2_max", "preL2_avg")


def _conv(rng, name, k, cin, cout, pad=1, stride=1, groups=1) -> LayerSpec:
    std = math.sqrt(2.0 / (k * k * cin / groups))
    f = (rng.standard_normal((k, k, cin // groups, cout), dtype=np.float32) * std).astype(np.float32)
    b = (rng.standard_normal(cout, dtype=np.float32) * 0.5).astype(np.float32)
    return LayerSpec(CONV, name, [f, b], {"pad": pad, "stride": stride, "dilate": 1})


def _pool(name, k=2, stride=2, pad=0) -> LayerSpec:
    return LayerSpec(POOL, name, [], {"method": "max", "pool": [k, k], "stride": stride, "pad": pad})


def _relu(name) -> LayerSpec:
    return LayerSpec(RELU, name, [], {"leak": 0})


def vgg_trunk(rng, arch: str, width: float, ceil_pool: bool) -> list[LayerSpec]:
    """``loadNet(arch, 'conv5_3')`` (or conv5_4): conv/relu, pools swapped before their relu."""
    layers, cin = [], 3
    pool_pad = [0, 1, 0, 1] if ceil_pool else 0  # Caffe ceil mode as MatConvNet beta25 imports it
    for b, (n, w) in enumerate(zip(VGG_BLOCKS[arch], VGG_WIDTHS), start=1):
        cout = max(1, round(w * width))
        for j in range(1, n + 1):
            layers.append(_conv(rng, f"conv{b}_{j}", 3, cin, cout))
            cin = cout
            last_conv = b == 5 and j == n
            if last_conv:
                break
            if j == n:  # swapped: pool before relu
                layers += [_pool(f"pool{b}", pad=pool_pad), _relu(f"relu{b}_{j}")]
            else:
                layers.append(_relu(f"relu{b}_{j}"))
    return layers


def caffe_trunk(rng, width: float) -> list[LayerSpec]:
    """``loadNet('caffe', 'conv5')``: CaffeNet (AlexNet) with LRN and grouped convs."""
    c = [max(2, 2 * round(w * width / 2)) for w in (96, 256, 384, 384, 256)]
    lrn = {"param": [5, 1, 2e-5, 0.75]}
    return [
        _conv(rng, "conv1", 11, 3, c[0], pad=0, stride=4),
        _pool("pool1", 3, 2),
        _relu("relu1"),
        LayerSpec(NORMALIZE, "norm1", [], dict(lrn)),
        _conv(rng, "conv2", 5, c[0], c[1], pad=2, groups=2),
        _pool("pool2", 3, 2),
        _relu("relu2"),
        LayerSpec(NORMALIZE, "norm2", [], dict(lrn)),
        _conv(rng, "conv3", 3, c[1], c[2]),
        _relu("relu3"),
        _conv(rng, "conv4", 3, c[2], c[3], groups=2),
        _relu("relu4"),
        _conv(rng, "conv5", 3, c[3], c[4], groups=2),
    ]


def random_centres(rng, d: int, k: int) -> np.ndarray:
    """D x K "k-means centres" of unit descriptors (means of 50 random unit vectors each, |c| < 1)."""
    x = rng.standard_normal((d, 50 * k)).astype(np.float32)
    x /= np.linalg.norm(x, axis=0, keepdims=True)
    return np.stack([x[:, i::k].mean(1) for i in range(k)], 1).astype(np.float32)


# alpha of the random aggregation layers (addLayers would compute it from training descriptors)
FIXTURE_ALPHA = {"vlad": 20.0, "vladv2": 10.0}


def make_net(
    arch: str = "vd16",
    method: str = "vlad_preL2_intra",
    width: float = 1.0,
    k: int = 64,
    pca_dim: int | None = 4096,
    ceil_pool: bool = False,
    seed: int = 0,
    average_image: str = "pixel",
) -> NetSpec:
    """A NetVLAD network with random weights: ``arch`` in vd16/vd19/caffe, any ``addLayers`` method,
    WPCA to ``pca_dim`` (None: no PCA). ``average_image`` 'pixel' stores 1x1x3, 'vgg' 224x224x3."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    tokens = method.split("_")
    types = aggregation_types(tokens)
    aggs = [t for t in tokens if t in types]
    if len(aggs) != 1 or any(t not in types and t not in ("preL2", "intra") for t in tokens):
        raise ValueError(f"unsupported method {method!r} (addLayers tokens: {'|'.join(types)}, preL2, intra)")
    rng = np.random.default_rng(seed)
    layers = caffe_trunk(rng, width) if arch == "caffe" else vgg_trunk(rng, arch, width, ceil_pool)
    d = layers[-1].weights[0].shape[3]
    if "preL2" in tokens:
        layers.append(LayerSpec(NORMALIZE, "preL2", [], {"param": [2 * d, 1e-12, 1, 0.5]}))
    entry = types[aggs[0]]
    if entry.alpha is None:
        layers.append(entry.aggregate(d, None, None))
    else:
        layers.append(entry.aggregate(d, random_centres(rng, d, k), FIXTURE_ALPHA.get(entry.token, 20.0)))
        if "intra" in tokens:
            layers.append(LayerSpec(NORMALIZE, "vlad:intranorm", [], {"param": [2 * d, 1e-12, 1, 0.5]}))
    layers.append(LayerSpec(WHOLE_L2, "postL2"))
    head = validate(NetSpec(list(layers)))
    dim = infer_shapes(head, image_hw=None)[-1][2]
    last_conv = [l.name for l in layers if l.type == CONV][-1]
    session = f"{arch}_offtheshelf_{last_conv}_synthetic_{method}"
    if pca_dim:
        u = rng.standard_normal((dim, pca_dim), dtype=np.float32) / np.float32(math.sqrt(dim))
        mu = rng.standard_normal(dim, dtype=np.float32) / np.float32(math.sqrt(dim))
        layers += [
            LayerSpec(CONV, "WPCA", [u.reshape(1, 1, dim, pca_dim), -(u.T @ mu)], {"pad": 0, "stride": 1, "dilate": 1}),
            LayerSpec(WHOLE_L2, "finalL2"),
        ]
        session += "_WPCA"
    avg = np.asarray(VGG_MEAN_RGB, np.float32).reshape(1, 1, 3)
    if average_image == "vgg":
        avg = np.broadcast_to(avg, (224, 224, 3)).copy()
    return validate(NetSpec(layers, {"averageImage": avg, "netID": arch, "sessionID": session, "epoch": 0}))


def write_imagenet_model(path, arch: str = "vd16", width: float = 1.0, seed: int = 0, fc_width: int = 4096) -> None:
    """A MatConvNet ImageNet model file as ``loadNet`` reads it (``imagenet-vgg-verydeep-16.mat``
    layout: top-level ``layers`` and ``meta`` saved with ``-struct``; relu before pool; the
    classifier fc6-fc8, dropout and softmax; ``meta.classes``), with random weights."""
    import scipy.io

    from .matconvnet.write import layer_fields

    rng = np.random.default_rng(seed)
    trunk = vgg_trunk(rng, arch, width, ceil_pool=False)
    layers, i = [], 0
    while i < len(trunk):  # undo relja_swapLayersForEfficiency: relu before its pool, as imported
        if trunk[i].type == POOL and i + 1 < len(trunk) and trunk[i + 1].type == RELU:
            layers += [trunk[i + 1], trunk[i]]
            i += 2
        else:
            layers.append(trunk[i])
            i += 1
    layers += [_relu(f"relu5_{VGG_BLOCKS[arch][-1]}"), _pool("pool5")]
    cin = layers[-3].weights[0].shape[3]
    fcw = max(8, round(fc_width * width))
    raw = [mat.struct(layer_fields(l)[0]) for l in layers]
    for name, k, a, b in (("fc6", 7, cin, fcw), ("fc7", 1, fcw, fcw), ("fc8", 1, fcw, 1000)):
        raw.append(mat.struct(layer_fields(_conv(rng, name, k, a, b, pad=0))[0]))
        if name != "fc8":
            raw.append(mat.struct(layer_fields(_relu(f"relu{name[2:]}"))[0]))
            raw.append(
                mat.struct({"name": mat.string(f"drop{name[2:]}"), "type": mat.string("dropout"), "rate": mat.num(0.5)})
            )
    raw.append(mat.struct({"name": mat.string("prob"), "type": mat.string("softmax")}))
    meta = mat.struct(
        {
            "normalization": mat.struct(
                {
                    "averageImage": np.asarray(VGG_MEAN_RGB, np.float32).reshape(1, 1, 3),
                    "imageSize": mat.num([224, 224, 3]),
                    "interpolation": mat.string("bilinear"),
                    "keepAspect": mat.num(1),
                    "border": mat.num([0, 0]),
                    "cropSize": mat.num([0.875, 0.875]),
                }
            ),
            "classes": mat.struct(
                {
                    "name": mat.cell([f"n{i:08d}" for i in range(1000)]),
                    "description": mat.cell([f"class {i}" for i in range(1000)]),
                }
            ),
        }
    )
    scipy.io.savemat(path, {"layers": mat.cell(raw), "meta": meta})
