"""GCL's checkpoints (generalized_contrastive_loss ``src/factory.py`` ``create_model``, ``src/networks.py``
``BaseNet``): ``backbone`` = VGG16's whole ``features`` (pool5 included) or a ResNet / ResNeXt cut before
its average pool, ``pool`` = GeM (learned ``pool.p``) or a max / avg pooling without weights, then
``F.normalize``. Images: ``Resize((480, 640))`` on the PIL image (bilinear; ``--image_size`` is not saved,
so ``image_size`` overrides it), ``ToTensor``, ImageNet ``Normalize`` (``extract_predictions.py``).
torchvision's ImageNet weights given ``--from gcl`` become GCL's start network (GeM p = 3), as ``train.py`` builds
it; the releases ``gcl_start_<arch>`` fetch them by name
([docs/pytorch_models.md](../../../docs/pytorch_models.md#key-mapping))."""

from __future__ import annotations

import torch

from ...errors import NetFormatError
from ...hub import TORCHVISION_URL, Release, register_release
from ...importers import IMAGENET, Importer, Keys, register_importer
from ...importers.layers import gem_layer, global_pool_layer, l2_layer
from ...importers.torchvision_weights import build as torchvision_trunk
from ...layers.backbones import match_backbone
from ...layers.pooling import GEM_P
from ...matconvnet.spec import LayerSpec, NetSpec

ARCHS = ("vgg16", "resnet18", "resnet34", "resnet50", "resnet152", "resnext101_32x8d")  # get_backbone
CUT = {"vgg16": "pool5"}  # the ResNets: children()[:-2], up to layer4
IMAGE_SIZE = (480, 640)  # extract_predictions.py --image_size default "480,640"
_START_P = {"p": torch.tensor([float(GEM_P)])}  # GeM(p=3), src/networks.py; train.py --p 3


def resize_meta(image_size) -> dict | None:
    """``Resize((H, W))`` on the PIL image (bilinear), or ``Resize(S)`` (one number: the shorter side)."""
    if image_size == "none":
        return None
    size = IMAGE_SIZE if image_size is None else tuple(image_size)
    if len(size) == 1:
        return {"mode": "shorter", "size": [int(size[0])]}
    return {"mode": "fixed", "size": [int(size[0]), int(size[1])], "filter": "bilinear"}


def _layout(backbone: LayerSpec, pooling: str, pool: dict, where: str, resize: dict | None) -> NetSpec:
    """``BaseNet``: the backbone cut where GCL cuts it, the pooling, ``F.normalize``; ImageNet preprocessing."""
    backbone.params["cut"] = CUT.get(backbone.params["arch"], "layer4")
    if pooling == "gem":
        pooled = gem_layer(pool, f"{where}: pool")
    elif pooling in ("max", "avg") and not pool:
        pooled = global_pool_layer(pooling)
    else:
        raise NetFormatError(f"--pooling {pooling}: GCL pools with GeM (pool.p), max or avg (no weights)")
    meta = {"preprocess": dict(IMAGENET), **({"resize": resize} if resize else {})}
    return NetSpec([backbone, pooled, l2_layer()], meta)


def gcl_network(arch: str, width: float = 1, resize: dict | None = None) -> NetSpec:
    """GCL's ``create_model(arch, 'GeM', norm='L2')`` with torchvision's initialisation (GeM p = 3, trained):
    what ``build`` makes from a checkpoint, before the weights (torch.hub's ``pretrained=False``, the demo)."""
    params = {"arch": arch, **({"width": width} if width != 1 else {})}
    return _layout(LayerSpec("backbone", "backbone", [], params), "gem", _START_P, "GeM", resize)


def _archs(options: dict) -> tuple[str, ...]:
    if options.get("arch") and options["arch"] not in ARCHS:
        raise NetFormatError(f"--arch {options['arch']}: GCL's backbones are {', '.join(ARCHS)}")
    return (options["arch"],) if options.get("arch") else ARCHS


def build(keys: Keys, info: dict, options: dict) -> NetSpec:
    """A GCL checkpoint, or torchvision ImageNet weights as GCL's training starts from them
    (``create_model(..., pretrained=True)``, ``src/factory.py``): its layout with GeM p = 3 (``--p``)."""
    resize = resize_meta(options.get("image_size"))
    if not keys.has("backbone") and (keys.has("features") or keys.has("layer4")):
        trunk = torchvision_trunk(keys, info, {"arch": options.get("arch")} if options.get("arch") else {})
        if trunk.layers[0].params["arch"] not in ARCHS:
            raise NetFormatError(f"{keys.where}: {trunk.layers[0].params['arch']} is not one of GCL's backbones")
        pooling = options.get("pooling") or "gem"
        return _layout(trunk.layers[0], pooling, _START_P if pooling == "gem" else {}, keys.where, resize)
    backbone = match_backbone(keys.take("backbone"), f"{keys.where}: backbone", archs=_archs(options))
    pool = keys.take("pool", required=False)
    pooling = options.get("pooling") or ("gem" if pool else None)
    if pooling is None:
        raise NetFormatError(f"{keys.where}: no pool.p: a max or avg pooling network; give --pooling max|avg")
    return _layout(backbone, pooling, pool, keys.where, resize)


def detect(state: dict, info: dict) -> int:
    """``backbone.*`` (+ ``pool.p``): GCL's ``BaseNet``."""
    tops = {k.split(".")[0] for k in state}
    return 3 if "backbone" in tops and tops <= {"backbone", "pool"} else 0


register_importer(Importer("gcl", detect, build, "GCL: VGG16 / ResNet / ResNeXt + GeM / max / avg + L2"))

GCL_HOW = ("from the links of the GCL README (DataverseNL doi:10.34894/W4LIGP, or Google Drive folder "
           "1RHxrAj062ZxDp5817t1s4OXGLP_i8JFX), under this name")  # fmt: skip
# (file's backbone, our arch, dim, MSLS-val R@1 of the GeM-GCL row, README table)
RELEASED = (("vgg16", "vgg16", 512, 65.9), ("resnet50", "resnet50", 2048, 66.2), ("resnet152", "resnet152", 2048, 70.3),
            ("resnext", "resnext101_32x8d", 2048, 75.5))  # fmt: skip
for _backbone, _arch, _dim, _r1 in RELEASED:
    for _pool in ("GeM", "avg"):
        register_release(Release(
            f"gcl_msls_{_backbone}_{_pool.lower()}", f"MSLS_{_backbone}_{_pool}_480_GCL.pth", None,
            f"GCL {_backbone} + {_pool} + L2, MSLS, {_dim}-D" + (f" (MSLS-val R@1 {_r1})" if _pool == "GeM" else ""),
            how=GCL_HOW, arch={"output_dim": _dim, "backbone": _arch},
            importer={"source": "gcl", **({"pooling": "avg"} if _pool == "avg" else {})},
        ))  # fmt: skip

# GCL's training starts (src/factory.py get_backbone, pretrained=True): torchvision's V1 ImageNet weights, and for
# resnext the WSL-Images Instagram model (torch.hub facebookresearch/WSL-Images resnext101_32x8d_wsl, hubconf.py:15)
for _arch, _file, _what in (
    ("vgg16", "vgg16-397923af.pth", "torchvision vgg16 ImageNet"),
    ("resnet50", "resnet50-0676ba61.pth", "torchvision resnet50 ImageNet"),
    ("resnet152", "resnet152-394f9c45.pth", "torchvision resnet152 ImageNet"),
    ("resnext101_32x8d", "ig_resnext101_32x8-c38310e5.pth", "WSL-Images resnext101_32x8d_wsl (Instagram)"),
):
    register_release(Release(
        f"gcl_start_{_arch}", _file, TORCHVISION_URL + _file,
        f"GCL's start: {_what} + GeM (p 3) + L2, 480x640 (src/factory.py create_model)",
        arch={"backbone": _arch}, importer={"source": "gcl"},
    ))  # fmt: skip
