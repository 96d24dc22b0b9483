"""STML's recipes ([docs/stml.md](../../../docs/stml.md#training-and-the-demo)): SGD lr 0.001, momentum 0.9,
weight decay 0.001, trainable from conv3_1, 30 epochs, 4 queries a batch (``1run_train_our_deattention_with_
sTML.sh``, ``train_function.bash:255``); its StepLR is never stepped, so the lr stays constant; early stop
after more than 10 epochs without a better val recall@1 (``--patience 10``, ``utils/get_parser.py:115``). No
addPCA.
The guidance source is the user's data (``--guidance``), not part of a recipe."""

from ...demo import Demo, register_demo
from ...train.recipes import RECIPES, register_recipe

STML = {"learning_rate": 1e-3, "momentum": 0.9, "weight_decay": 1e-3, "back_prop_to_layer": "conv3_1",
        "n_epoch": 30, "batch_size": 4, "lr_down_freq": 1000, "pca_dim": 0, "forward": "batch",
        "select_by": 1, "patience": 10}  # fmt: skip

register_recipe("stml-triplet", {**STML, "loss": "triplet-stml"}, "STML's baseline row: triplet (margin 0.1), "
                "conv3_1 up, lr 0.001 constant")  # fmt: skip
register_recipe("stml", {**STML, "loss": "stml", "attention": ("deattention-v1", "se")}, "STML's model: "
                "de-attention v1 + SE + sTML, conv3_1 up, lr 0.001 constant (add --guidance)")  # fmt: skip

# Nanne's pytorch-NetVlad as STML's table runs it (85.2 / 94.7 on Pitts30k): main.py defaults
NANNE = {"loss": "triplet-nanne", "learning_rate": 1e-4, "momentum": 0.9, "weight_decay": 1e-3, "batch_size": 4,
         "n_epoch": 30, "lr_down_freq": 5, "lr_down_factor": 2, "lr_schedule": "steplr", "patience": 10,
         "back_prop_to_layer": "conv5_1", "n_neg_choice": 1000, "n_neg_cap": 10, "comp_feats_frequency": 1000,
         "pca_dim": 0, "forward": "batch"}  # fmt: skip
register_recipe("nanne", NANNE, "Nanne's pytorch-NetVlad: triplet (margin sqrt 0.1), SGD lr 0.0001 halved at epochs "
                "5, 10, ... (StepLR), early stop after 10 epochs without a better recall@5, conv5_1 up (start "
                "from cluster --original nanne)")  # fmt: skip

# netvlad-port demo --recipe stml: both rows on the synthetic streets with masks, 3 epochs; nNegChoice 200 for the
# small data, 5 negatives a tuple and no epoch-0 test to keep it short (the figures in docs/stml.md were measured so)
DEMO = {"learning_rate": 1e-3, "back_prop_to_layer": "conv3_1", "n_neg_choice": 200, "n_neg_cap": 5, "test0": False,
        "pca_dim": 0, "forward": "batch", "select_by": 1}  # fmt: skip
register_recipe("demo-stml-triplet", {**DEMO, "loss": "triplet-stml"}, "the stml demo's baseline row")
register_recipe("demo-stml", {**DEMO, "loss": "stml", "attention": ("deattention-v1", "se")},
                "the stml demo's de-attention + SE + sTML row (with --guidance)")  # fmt: skip


def _mask_iou_note(spec, final, options: dict, db) -> str:
    """How well the de-attention mask finds the rejected regions (IoU, test images) at the start of
    training (the inserted module's initialisation) and at the end."""
    from ...loading import load
    from ...model import SimpleNN
    from ...networks import insert_attention
    from .guidance import REJECT, Guidance, dataset_root, mask_iou

    if not options.get("guidance"):
        return ""
    guidance = Guidance(options["guidance"], dataset_root(db), options.get("guidance_reject", REJECT))
    images = [db.db_image(i) for i in range(0, db.num_images, 3)] + [db.q_image(i) for i in range(0, db.num_queries, 2)]
    start = mask_iou(SimpleNN(insert_attention(spec, RECIPES["demo-stml"].options["attention"])), guidance, images)
    end = mask_iou(load(final), guidance, images)
    return (
        f"de-attention mask vs the synthetic sky and cars (IoU of the rejected regions, {len(images)} test "
        f"images): {start * 100:.1f}% at the start, {end * 100:.1f}% trained"
    )


def demo_network(db_train, cache_dir):
    """STML's network (``networks/get_model.py``) as the demo trains it: torchvision's VGG16 ``features[:-2]`` (1/8
    width, torchvision's initialisation: no internet here), split at conv3_1, Nanne's NetVLAD clustered on the
    training images (K 16); RGB 0..1 with ImageNet mean and std. The demo's images are small already: no resize."""
    from ...clusters import nanne_netvlad
    from ...importers import IMAGENET
    from ...layers.backbones import split_backbone
    from ...matconvnet.spec import LayerSpec, NetSpec

    trunk = NetSpec([LayerSpec("backbone", "encoder", [], {"arch": "vgg16", "cut": "conv5_3", "width": 0.125})],
                    {"preprocess": dict(IMAGENET), "netID": "vgg16"})  # fmt: skip
    spec = nanne_netvlad(split_backbone(trunk, "conv3_1"), db_train, k=16, cache_dir=cache_dir, progress=False)
    what = ("STML's layout: torchvision VGG16 features to conv5_3 (1/8 width, random weights), split at conv3_1, "
            "Nanne's NetVLAD (K 16, clustered on the training images)")  # fmt: skip
    return spec, what


register_demo(Demo(
    "stml", "dbstruct", ("synthetic-train", "synthetic-val", "synthetic-test"), "netvlad",
    (("baseline triplet", "baseline", "demo-stml-triplet", {}),
     ("de-att + sTML", "deattention", "demo-stml", {"guidance": "ids:{data}/masks"})),
    epochs=3, masks=True, notes=_mask_iou_note, network=demo_network, network_clusters=True,
    about="STML's recipe (lr 0.001, conv3_1 up): the triplet baseline, then de-attention v1 + SE + sTML "
          "with the mask guided by the synthetic sky and cars",
))  # fmt: skip
