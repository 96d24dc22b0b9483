"""torchvision backbones as one layer (``backbone``): the architecture by torchvision's name and the cut
each original makes ([docs/pytorch_models.md](../../docs/pytorch_models.md#backbones)):

- VGG16 ``conv5_3``: ``features[:-2]``, conv5_3 without its ReLU (Nanne's pytorch-NetVlad, STML);
  ``pool5``: the whole ``features``, relu5_3 and pool5 included (GCL ``get_backbone``);
- ResNets and ResNeXts ``layer4``: ``nn.Sequential(*list(children())[:-2])`` (GCL), ``layer3`` one block
  fewer.

The block keeps torchvision's own module names (``0.weight``, ``4.0.conv1.weight`` ...), so a checkpoint's
keys map by prefix. BatchNorm follows the model's train or eval mode.

A VGG16 block can start later (``start``, a layer name): :func:`split_backbone` cuts one block in two at
a named layer, so the layers inside it can be addressed (``--back-prop-to-layer conv3_1``, STML's) and the
frozen part becomes the trunk cache.
"""

from __future__ import annotations

import functools

from torch import nn

from ..errors import NetFormatError
from ..matconvnet.spec import LayerSpec, LayerType, register_layer
from .torch_block import BUILDERS, TorchBlockLayer, block_canonical, block_state

BACKBONE = "backbone"
VGG = ("vgg16",)
ALEXNET = ("alexnet",)
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d")
# cut -> number of kept items counted from the end of features / children, and the halvings of the input
VGG_CUTS = {"conv5_3": (2, 4), "relu5_3": (1, 4), "pool5": (0, 5)}  # what checkpoints are matched against
# torchvision's vgg16.features, item by item: (name, output channels at width 1)
VGG_LAYERS: list[tuple[str, int]] = []
for _stage, (_n, _c) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)), 1):
    for _i in range(1, _n + 1):
        VGG_LAYERS += [(f"conv{_stage}_{_i}", _c), (f"relu{_stage}_{_i}", _c)]
    VGG_LAYERS.append((f"pool{_stage}", _c))
VGG_NAMES = [name for name, _ in VGG_LAYERS]
RESNET_CUTS = {"layer4": (2, 5), "layer3": (3, 4)}
ARCHS = VGG + ALEXNET + RESNETS


ALEXNET_CUTS = {"conv5": (2, 0)}  # features[:-2] (Nanne's --arch alexnet); its sizes: _alexnet_hw


def cuts(arch: str) -> dict[str, tuple[int, int]]:
    """cut -> (items dropped from the end, stride-2 stages up to it); VGG16 at any of its layers."""
    if arch in VGG:
        return {n: (len(VGG_NAMES) - 1 - i, sum(m.startswith("pool") for m in VGG_NAMES[: i + 1]))
                for i, n in enumerate(VGG_NAMES)}  # fmt: skip
    return ALEXNET_CUTS if arch in ALEXNET else RESNET_CUTS


def _start(params: dict) -> int:
    """The index in ``features`` where a (split) VGG16 block starts."""
    return VGG_NAMES.index(params["start"]) if params.get("start") else 0


def narrow_vgg16(width: float) -> nn.Sequential:
    """VGG16's ``features`` with every conv ``width`` times as wide (``torchvision.models.vgg.make_layers``),
    initialised as ``torchvision.models.VGG`` initialises its convs."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers([v if v == "M" else max(1, round(v * width)) for v in cfgs["D"]])
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return features


def out_channels(arch: str, cut: str, width: float = 1) -> int:
    if arch in VGG:
        return max(1, round(dict(VGG_LAYERS)[cut] * width))
    if arch in ALEXNET:
        return 256
    wide = 512 if arch in ("resnet18", "resnet34") else 2048
    return wide if cut == "layer4" else wide // 2


def build_backbone(in_channels: int, params: dict) -> nn.Module:
    """torchvision's ``arch`` (no weights: torchvision's initialisation) cut at ``params['cut']``."""
    import torchvision

    arch, cut = params["arch"], params["cut"]
    drop = cuts(arch)[cut][0]
    if params.get("width", 1) != 1:  # a narrower VGG16 (demos, tests): torchvision's layers and initialisation
        features = narrow_vgg16(float(params["width"]))
        return features[_start(params) : len(features) - drop]
    net = getattr(torchvision.models, arch)(weights=None)
    if arch in VGG + ALEXNET:
        return net.features[_start(params) : len(net.features) - drop]
    return nn.Sequential(*list(net.children())[:-drop])


def _halve(n: int, arch: str) -> int:
    """One stride-2 stage: VGG's 2x2 max-pool floors; a ResNet's 3x3 (or 7x7) stride-2 window, padded, gives
    ceil(n / 2)."""
    return n // 2 if arch in VGG else (n - 1) // 2 + 1


def _alexnet_hw(n: int, where: str) -> int:
    """conv1 11x11 stride 4 pad 2, then two 3x3 stride-2 max-pools (the later convs keep sizes)."""
    n = (n + 4 - 11) // 4 + 1
    for _ in range(2):
        n = (n - 3) // 2 + 1
    if n < 1:
        raise NetFormatError(f"{where}: the image is too small for alexnet up to conv5")
    return n


def _canonical(layer: LayerSpec, where: str, previous) -> None:
    arch, cut = layer.params.get("arch"), layer.params.get("cut")
    if arch not in ARCHS:
        raise NetFormatError(f"{where}: backbone arch {arch!r} is not one of {', '.join(ARCHS)}")
    if cut not in cuts(arch):
        raise NetFormatError(f"{where}: {arch} cut {cut!r} is not one of {', '.join(cuts(arch))}")
    start = layer.params.get("start")
    if start is not None and (arch not in VGG or start not in VGG_NAMES or _start(layer.params) > VGG_NAMES.index(cut)):
        raise NetFormatError(f"{where}: start {start!r}: a vgg16 layer at or before the cut {cut}")
    width = layer.params.get("width", 1)
    if not isinstance(width, (int, float)) or not (0 < width <= 1) or (width != 1 and arch not in VGG):
        raise NetFormatError(f"{where}: width {width!r}: a number in (0, 1], and 1 for {arch}")
    block_canonical(layer, where, previous)


def _shape(layer: LayerSpec, shape, where: str):
    h, w, c = shape
    arch, cut, first = layer.params["arch"], layer.params["cut"], _start(layer.params)
    want = 3 if first == 0 else out_channels(arch, VGG_NAMES[first - 1], float(layer.params.get("width", 1)))
    if c != want:
        raise NetFormatError(f"{where}: this {arch} block takes {want} channels, but its input has {c}")
    if arch in ALEXNET and h is not None:
        h, w = _alexnet_hw(h, where), _alexnet_hw(w, where)
    before = cuts(arch)[VGG_NAMES[first - 1]][1] if first else 0
    for _ in range(cuts(arch)[cut][1] - before):
        if h is not None and (h < 2 or w < 2):
            raise NetFormatError(f"{where}: the image is too small for {arch} up to {cut}")
        h, w = (None, None) if h is None else (_halve(h, arch), _halve(w, arch))
    return h, w, out_channels(arch, cut, float(layer.params.get("width", 1)))


BUILDERS[BACKBONE] = build_backbone
register_layer(LayerType(BACKBONE, TorchBlockLayer, n_weights=range(0, 4096), canonical=_canonical, shape=_shape))


@functools.cache
def expected_shapes(arch: str, cut: str) -> dict[str, tuple[int, ...]]:
    """The stored tensors of ``arch`` cut at ``cut``, key -> shape (built on the meta device: no memory)."""
    import torch

    with torch.device("meta"):
        block = build_backbone(3, {"arch": arch, "cut": cut})
    return {k: tuple(v.shape) for k, v in block_state(block).items()}


def match_backbone(state: dict, where: str, archs=ARCHS, cut: str | None = None) -> LayerSpec:
    """The ``backbone`` layer whose architecture and cut store exactly ``state``'s keys and shapes (a
    torchvision module's state_dict, ``num_batches_tracked`` optional); otherwise one line naming the
    missing, unexpected or mis-shaped keys of the closest candidate."""
    given = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    best, best_score = None, -1.0
    for arch in archs:
        for c in [cut] if cut else (VGG_CUTS if arch in VGG else cuts(arch)):
            if c not in cuts(arch):
                continue
            want = expected_shapes(arch, c)
            if want == given:
                layer = LayerSpec(BACKBONE, "backbone", [], {"arch": arch, "cut": c})
                bad = next((k for k in want if not state[k].is_floating_point()), None)
                if bad is not None:
                    raise NetFormatError(f"{where}: {bad} holds {state[bad].dtype} values; expected floating point")
                layer.weights = [state[k].detach().float().cpu().numpy() for k in want]
                return layer
            score = sum(given.get(k) == s for k, s in want.items()) / max(len(want), len(given))
            if score > best_score:
                best, best_score = (arch, c, want), score
    if best is None:
        raise NetFormatError(f"{where}: no backbone {', '.join(archs)} has a cut {cut!r}")
    arch, c, want = best
    missing = [k for k in want if k not in given]
    extra = [k for k in given if k not in want]
    shaped = [f"{k} {given[k]} (expected {want[k]})" for k in want if k in given and given[k] != want[k]]
    kinds = (("missing", missing), ("unexpected", extra), ("mis-shaped", shaped))
    parts = [f"{label} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}" for label, keys in kinds if keys]
    raise NetFormatError(f"{where}: not a torchvision backbone; closest {arch} up to {c}: {'; '.join(parts)}")


def block_layer_names(layer) -> list[str]:
    """The VGG16 layer names inside a ``backbone`` layer (a LayerSpec or a built layer); [] for other archs."""
    params = layer.params if isinstance(layer.params, dict) else layer.params()
    if params.get("arch") not in VGG:
        return []
    return VGG_NAMES[_start(params) : VGG_NAMES.index(params["cut"]) + 1]


def split_backbone(spec, at: str):
    """``spec`` with its VGG16 ``backbone`` layer cut in two before layer ``at`` (``conv3_1``): the first keeps
    the name and ends at the layer before, the second is named ``at`` and starts there; each keeps its
    tensors (torchvision's keys), so the network computes the same. The first can then be the frozen trunk."""
    from ..matconvnet.spec import NetSpec, validate

    hits = [i for i, l in enumerate(spec.layers) if l.type == BACKBONE and l.params["arch"] in VGG]
    if len(hits) != 1:
        raise NetFormatError(f"split at {at}: the network has {len(hits)} vgg16 backbone blocks, not one")
    i, layer = hits[0], spec.layers[hits[0]]
    first, cut = _start(layer.params), layer.params["cut"]
    if at not in VGG_NAMES or not first < VGG_NAMES.index(at) <= VGG_NAMES.index(cut):
        raise NetFormatError(f"split at {at}: not a vgg16 layer inside '{layer.name}' (after its first, up to {cut})")
    from .torch_block import build_block

    weights = layer.weights or [v.numpy() for v in block_state(build_block(BACKBONE, 3, layer.params)).values()]
    n_head = 2 * sum(n.startswith("conv") for n in VGG_NAMES[first : VGG_NAMES.index(at)])  # weight, bias each
    head = LayerSpec(
        BACKBONE, layer.name, list(weights[:n_head]), {**layer.params, "cut": VGG_NAMES[VGG_NAMES.index(at) - 1]}
    )
    tail = LayerSpec(BACKBONE, at, list(weights[n_head:]), {**layer.params, "start": at})
    return validate(NetSpec(spec.layers[:i] + [head, tail] + spec.layers[i + 1 :], dict(spec.meta)))
