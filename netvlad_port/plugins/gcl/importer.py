"""GCL's checkpoints (generalized_contrastive_loss ``src/factory.py`` ``create_model``, ``src/networks.py``
``BaseNet``): ``backbone`` = VGG16's whole ``features`` (pool5 included) or a ResNet / ResNeXt cut before
its average pool, ``pool`` = GeM (learned ``pool.p``) or a max / avg pooling without weights, then
``F.normalize``. Images: ``Resize((480, 640))`` on the PIL image (bilinear; ``--image_size`` is not saved,
so ``image_size`` overrides it), ``ToTensor``, ImageNet ``Normalize`` (``extract_predictions.py``)
([docs/pytorch_models.md](../../../docs/pytorch_models.md#key-mapping))."""

from __future__ import annotations

import torch

from ...errors import NetFormatError
from ...hub import Release, register_release
from ...importers import IMAGENET, Importer, Keys, register_importer
from ...importers.layers import gem_layer, global_pool_layer, l2_layer
from ...layers.backbones import match_backbone
from ...layers.pooling import GEM_P
from ...matconvnet.spec import LayerSpec, NetSpec

ARCHS = ("vgg16", "resnet18", "resnet34", "resnet50", "resnet152", "resnext101_32x8d")  # get_backbone
CUT = {"vgg16": "pool5"}  # the ResNets: children()[:-2], up to layer4
IMAGE_SIZE = (480, 640)  # extract_predictions.py --image_size default "480,640"


def resize_meta(image_size) -> dict | None:
    """``Resize((H, W))`` on the PIL image (bilinear), or ``Resize(S)`` (one number: the shorter side)."""
    if image_size == "none":
        return None
    size = IMAGE_SIZE if image_size is None else tuple(image_size)
    if len(size) == 1:
        return {"mode": "shorter", "size": [int(size[0])]}
    return {"mode": "fixed", "size": [int(size[0]), int(size[1])], "filter": "bilinear"}


def gcl_network(arch: str, width: float = 1, resize: dict | None = None) -> NetSpec:
    """GCL's ``create_model(arch, 'GeM', norm='L2')`` with torchvision's initialisation (GeM p = 3, trained):
    what ``build`` makes from a checkpoint, before the weights (torch.hub's ``pretrained=False``, the demo)."""
    params = {"arch": arch, "cut": CUT.get(arch, "layer4"), **({"width": width} if width != 1 else {})}
    gem = gem_layer({"p": torch.tensor([GEM_P])}, "GeM")
    meta = {"preprocess": dict(IMAGENET), **({"resize": resize} if resize else {})}
    return NetSpec([LayerSpec("backbone", "backbone", [], params), gem, l2_layer()], meta)


def build(keys: Keys, info: dict, options: dict) -> NetSpec:
    archs = (options["arch"],) if options.get("arch") else ARCHS
    if any(a not in ARCHS for a in archs):
        raise NetFormatError(f"--arch {options['arch']}: GCL's backbones are {', '.join(ARCHS)}")
    backbone = match_backbone(keys.take("backbone"), f"{keys.where}: backbone", archs=archs)
    arch = backbone.params["arch"]
    backbone.params["cut"] = CUT.get(arch, "layer4")
    pool = keys.take("pool", required=False)
    pooling = options.get("pooling") or ("gem" if pool else None)
    if pooling is None:
        raise NetFormatError(f"{keys.where}: no pool.p: a max or avg pooling network; give --pooling max|avg")
    if pooling == "gem":
        layers = [backbone, gem_layer(pool, f"{keys.where}: pool")]
    elif pooling in ("max", "avg") and not pool:
        layers = [backbone, global_pool_layer(pooling)]
    else:
        raise NetFormatError(f"--pooling {pooling}: GCL pools with GeM (pool.p), max or avg (no weights)")
    meta = {"preprocess": dict(IMAGENET)}
    resize = resize_meta(options.get("image_size"))
    if resize:
        meta["resize"] = resize
    return NetSpec(layers + [l2_layer()], meta)


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
