"""torchvision's ImageNet classifiers (``torchvision.models`` state_dicts, as ``load_state_dict_from_url``
gives them) as training starts: the convolutional part as a ``backbone`` layer cut where the originals cut
it -- VGG16 at conv5_3 (Nanne, STML, NetVLAD's own trunk), AlexNet at conv5, ResNets after layer4 (GCL) --
with torchvision's preprocessing. ``--set cut=pool5`` gives GCL's VGG16 trunk. The classifier is dropped."""

from __future__ import annotations

from ..errors import NetFormatError
from ..layers.backbones import cuts, match_backbone
from ..matconvnet.spec import NetSpec
from . import IMAGENET, Importer, Keys, register_importer

RESNET_PARTS = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
DEFAULT_CUT = {"vgg16": "conv5_3", "alexnet": "conv5"}


def build(keys: Keys, info: dict, options: dict) -> NetSpec:
    if keys.has("features"):  # VGG, AlexNet: features.<i> = the block's <i>
        trunk = keys.take("features")
        keys.take("classifier", required=False)
    else:  # ResNets: children()[:-2], numbered as GCL's nn.Sequential numbers them
        trunk = {}
        for part, index in RESNET_PARTS.items():
            trunk |= {f"{index}.{k}": v for k, v in keys.take(part).items()}
        keys.take("fc", required=False)
    archs = (options["arch"],) if options.get("arch") else None
    layer = match_backbone(trunk, f"{keys.where}: backbone", **({"archs": archs} if archs else {}))
    arch = layer.params["arch"]
    cut = options.get("cut") or DEFAULT_CUT.get(arch, layer.params["cut"])
    if cut not in cuts(arch):
        raise NetFormatError(f"--set cut={cut}: {arch} cuts are {', '.join(cuts(arch))}")
    if arch in ("vgg16", "alexnet") or cut == layer.params["cut"]:
        layer.params["cut"] = cut
    else:
        raise NetFormatError(f"--set cut={cut}: the weights end at {layer.params['cut']}")
    return NetSpec([layer], {"preprocess": dict(IMAGENET)})


def detect(state: dict, info: dict) -> int:
    tops = {k.split(".")[0] for k in state}
    if tops == {"features", "classifier"} or tops == {*RESNET_PARTS, "fc"}:
        return 1
    return 0


register_importer(Importer("torchvision", detect, build, "torchvision ImageNet classifiers: the trunk"))
