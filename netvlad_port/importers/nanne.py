"""Nanne's pytorch-NetVlad (Nanne/pytorch-NetVlad ``main.py``): ``encoder`` = VGG16 ``features[:-2]`` (or
AlexNet's), ``pool`` = NetVLAD (K = 64 by default, ``--vladv2`` adds the assignment bias) or a global
max / avg pooling followed by ``F.normalize``; images as they are (no resize), ``ToTensor`` and ImageNet
``Normalize`` (``pittsburgh.py`` ``input_transform``). DataParallel's ``module.`` is removed by
``pth.model_state``."""

from __future__ import annotations

from ..errors import NetFormatError
from ..layers.backbones import match_backbone
from ..matconvnet.spec import NetSpec
from . import IMAGENET, Importer, Keys, register_importer
from .layers import POOLINGS, global_pool_layer, l2_layer, netvlad_layer

ENCODER_CUTS = {"vgg16": "conv5_3", "alexnet": "conv5"}  # features[:-2]: the last conv without its ReLU


def encoder_and_pool(keys: Keys, options: dict, where: str) -> tuple[list, dict]:
    """The ``encoder`` backbone layer and the ``pool`` entries (Nanne's and STML's common part)."""
    archs = (options["arch"],) if options.get("arch") else tuple(ENCODER_CUTS)
    for arch in archs:
        if arch not in ENCODER_CUTS:
            raise NetFormatError(f"--arch {arch}: this original's encoder is one of {', '.join(ENCODER_CUTS)}")
    encoder = keys.take("encoder")
    backbone = match_backbone(encoder, f"{where}: encoder", archs=archs, cut=None)
    if backbone.params["cut"] != ENCODER_CUTS[backbone.params["arch"]]:
        raise NetFormatError(f"{where}: encoder ends at {backbone.params['cut']}, not at the last conv layer")
    backbone.name = "encoder"
    return [backbone], keys.take("pool", required=False)


def pool_layers(pool: dict, options: dict, where: str) -> list:
    """NetVLAD when ``pool.*`` holds its weights; max / avg (no weights) only when ``--pooling`` says so."""
    pooling = options.get("pooling") or ("netvlad" if pool else None)
    if pooling is None:
        raise NetFormatError(f"{where}: no pool.* weights: a max or avg pooling network; give --pooling max|avg")
    if pooling not in POOLINGS:
        raise NetFormatError(f"--pooling {pooling}: expected one of {', '.join(POOLINGS)}")
    if pooling == "netvlad":
        return [netvlad_layer(pool, f"{where}: pool")]
    if pool:
        raise NetFormatError(f"{where}: --pooling {pooling} has no weights, but the checkpoint has pool.* "
                             f"({', '.join(sorted(pool)[:3])})")  # fmt: skip
    return [global_pool_layer(pooling), l2_layer()]


def build(keys: Keys, info: dict, options: dict) -> NetSpec:
    layers, pool = encoder_and_pool(keys, options, keys.where)
    return NetSpec(layers + pool_layers(pool, options, keys.where), {"preprocess": dict(IMAGENET)})


def detect(state: dict, info: dict) -> int:
    """``encoder.*`` + ``pool.*`` and nothing else: Nanne's layout (STML's without attention looks the same
    but saves ``deatt_category_list``)."""
    tops = {k.split(".")[0] for k in state}
    return 2 if tops <= {"encoder", "pool"} and "encoder" in tops and "deatt_category_list" not in info else 0


register_importer(Importer("nanne", detect, build, "Nanne/pytorch-NetVlad: VGG16 (or AlexNet) + NetVLAD / max / avg"))
