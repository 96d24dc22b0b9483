"""STML's checkpoints (deattention_with_stml_for_vpr ``networks/get_model.py``): Nanne's ``encoder`` and
``pool`` plus the attention modules a run enabled, found from their key prefixes (the checkpoint does not
record the flags) and run in the code's fixed order: de-attention, SE, BAM, CBAM, CRN
(``tasks/common.py``). Images: ``img.resize((640, 480))`` (PIL's default filter, bicubic), ``ToTensor``,
ImageNet ``Normalize`` (``dataloaders/pittsburgh.py``). Old checkpoints' ``crm`` keys are read as ``crn``
(``utils/misc.py`` ``change_crm_to_crn``) ([docs/pytorch_models.md](../../../docs/pytorch_models.md#key-mapping))."""

from __future__ import annotations

from ...errors import NetFormatError
from ...hub import Release, register_release
from ...importers import IMAGENET, Importer, Keys, register_importer
from ...importers.layers import gem_layer, l2_layer
from ...importers.nanne import encoder_and_pool, pool_layers
from ...layers.torch_block import build_block, weights_from_state
from ...matconvnet.spec import LayerSpec, NetSpec

RESIZE = {"mode": "fixed", "size": [480, 640], "filter": "bicubic"}
_MASK = {"crn_conv1": "mask.g1", "crn_conv2": "mask.g2", "crn_conv3": "mask.g3", "crn_conv4": "mask.w"}
_UNUSED = ("crn_downsample", "crn_upsample")  # built but never run (deattention_model.py forward)
_BAM_C, _BAM_S = "channel_att.gate_c.gate_c_", "spatial_att.gate_s.gate_s_"
# checkpoint prefix -> (our layer type, its module names for the original's)
MODULES = {
    "deattention": ("deattention", _MASK),
    "senet_attention": ("se", {"fc": "fc"}),
    "bam_attention": ("bam", {
        _BAM_C + "fc_0": "channel.0", _BAM_C + "bn_1": "channel.1", _BAM_C + "fc_final": "channel.3",
        _BAM_S + "conv_reduce0": "spatial.0", _BAM_S + "bn_reduce0": "spatial.1", _BAM_S + "conv_di_0": "spatial.3",
        _BAM_S + "bn_di_0": "spatial.4", _BAM_S + "conv_di_1": "spatial.6", _BAM_S + "bn_di_1": "spatial.7",
        _BAM_S + "conv_final": "spatial.9",
    }),
    "cbam_attention": ("cbam", {"ChannelGate.mlp.1": "mlp.0", "ChannelGate.mlp.3": "mlp.2",
                                "SpatialGate.spatial.conv": "spatial.0", "SpatialGate.spatial.bn": "spatial.1"}),
    "crn_attention": ("crn", _MASK),
}  # fmt: skip
UNSUPPORTED = ("deattention_auto", "ch_eca_attention")


def _renamed(state: dict, names: dict, where: str) -> dict:
    out = {}
    for key, value in state.items():
        head = next((k for k in (*names, *_UNUSED) if key.startswith(k + ".")), None)
        if head is None:
            raise NetFormatError(f"{where}.{key}: not a key of this module")
        if head in names:
            out[names[head] + key[len(head) :]] = value
    return out


def attention_layer(prefix: str, state: dict, options: dict, where: str) -> LayerSpec:
    kind, names = MODULES[prefix]
    params = {}
    if kind in ("deattention", "crn"):
        params["padding"] = "reflect" if kind == "crn" else options.get("deattention_padding", "reflect")
    if kind == "deattention":
        wide = tuple(state.get("crn_conv3.0.weight", state.get("crm_conv3.0.weight")).shape)[:1] == (32,)
        params["version"] = 3 if wide else int(options.get("deattention_version", 1))
        if params["version"] == 3 and "deattention_version" in options and int(options["deattention_version"]) != 3:
            raise NetFormatError(f"{where}: crn_conv3 has 32 filters: de-attention version 3, not "
                                 f"{options['deattention_version']}")  # fmt: skip
    block = build_block(kind, 512, params)
    layer = LayerSpec(kind, prefix, [], params)
    layer.weights = weights_from_state(block, _renamed(state, names, where), where)
    return layer


def build(keys: Keys, info: dict, options: dict) -> NetSpec:
    keys.state = {k.replace("crm", "crn"): v for k, v in keys.state.items()}
    for name in UNSUPPORTED:
        if keys.has(name):
            raise NetFormatError(f"{keys.where}: has {name}.* ({name} is not supported)")
    layers, pool = encoder_and_pool(keys, options, keys.where)
    width = layers[0].params["arch"]
    for prefix in MODULES:
        if keys.has(prefix):
            if width != "vgg16":
                raise NetFormatError(f"{keys.where}: {prefix} needs STML's 512-channel vgg16 encoder")
            layers.append(attention_layer(prefix, keys.take(prefix), options, f"{keys.where}: {prefix}"))
    if set(pool) == {"0.p"}:  # --pooling gem: Sequential[GeM, Flatten, L2Norm]
        layers += [gem_layer({"p": pool["0.p"]}, f"{keys.where}: pool"), l2_layer()]
    else:
        layers += pool_layers(pool, options, keys.where)
    return NetSpec(layers, {"preprocess": dict(IMAGENET), "resize": dict(RESIZE)})


def detect(state: dict, info: dict) -> int:
    """``encoder.*`` with attention modules, or a container that saved ``deatt_category_list``."""
    tops = {k.split(".")[0] for k in state}
    known = {"encoder", "pool", *MODULES, *UNSUPPORTED}
    if "encoder" not in tops or not tops <= known:
        return 0
    return 3 if tops & {*MODULES, *UNSUPPORTED} or "deatt_category_list" in info else 0


register_importer(Importer("stml", detect, build, "STML: VGG16 + de-attention / SE / BAM / CBAM / CRN + NetVLAD"))

STML_HOW = ("from weight_image_retrieval.tar.gz (Google Drive id 1xYxgii_iZogGWtKqLTQF2XlCfYguj1CY, the STML "
            "README): its pretrained/{}/checkpoints/model_best.pth.tar, saved under this name")  # fmt: skip
_RUN = "trained_pitts30k_vgg16_netvladpooling_"
for _name, _dir, _about in (
    ("stml_deattention_stml", _RUN + "sTML1.4_deatt0.1_reclustering_senet",
     "de-attention + SE + sTML (Pitts30k-test R@1 90.3)"),
    ("stml_stml", _RUN + "sTML1.4_m0.1", "sTML"),
    ("stml_crn", _RUN + "attention_crn_attention", "CRN attention (Pitts30k-test R@1 87.1)"),
    ("stml_senet", _RUN + "attention_senet_attention", "SE attention (Pitts30k-test R@1 87.2)"),
    ("stml_bam", _RUN + "attention_bam_attention", "BAM attention (Pitts30k-test R@1 87.2)"),
    ("stml_cbam", _RUN + "attention_cbam_attention", "CBAM attention (Pitts30k-test R@1 85.2)"),
):  # fmt: skip
    register_release(Release(_name, f"{_name}.pth.tar", None, f"STML VGG16 + {_about} + NetVLAD (K 64), 32768-D",
                             how=STML_HOW.format(_dir), arch={"output_dim": 32768, "clusters": 64, "backbone": "vgg16"},
                             importer={"source": "stml"}))  # fmt: skip
