"""GCL's recipes ([docs/gcl.md](../../../docs/gcl.md#training)): ``train.py``'s defaults -- 52 steps of
10,000 queries (an epoch of the loop is one step), 32 pairs a batch in mini-batches of 2 pairs, plain
SGD lr 0.1 on every parameter, lr / 10 every 25 steps, validation on all of MSLS-val after each step
under GCL's protocol, the best step by recall@5 -- and the demo's run on the synthetic MSLS layout."""

from ...demo import Demo, register_demo
from ...train.recipes import register_recipe

GCL = {"loss": "gcl", "learning_rate": 0.1, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 32,
       "lr_down_freq": 25, "lr_down_factor": 10, "back_prop_to_layer": "backbone", "n_epoch": 52,
       "step_queries": 10_000, "forward": "siamese", "select_by": 5, "val_protocol": "gcl", "pca_dim": 0}  # fmt: skip
register_recipe("gcl", GCL, "GCL's train.py: 52 steps of 10,000 queries, 32 pairs a batch as 16 x 2, plain SGD "
                "lr 0.1 on every parameter, lr / 10 every 25 steps, best step by val recall@5")  # fmt: skip
register_recipe("demo-gcl", {**GCL, "learning_rate": 1.0}, "the gcl demo: GCL's recipe (steps of all the "
                "synthetic queries, pairs in mini-batches of 2), lr 1.0 for its 1/8-width VGG-GeM")  # fmt: skip


def demo_network():
    """GCL's own VGG16-GeM layout (``create_model('vgg16', 'GeM', norm='L2')``): torchvision's VGG16 ``features``
    whole (pool5 included; 1/8 width here, torchvision's initialisation), GeM with a trained p from 3,
    ``F.normalize``; RGB 0..1 with ImageNet mean and std. The demo's images are already small: no resize."""
    from .importer import gcl_network

    what = "GCL's VGG16-GeM layout: torchvision VGG16 features to pool5 (1/8 width, random weights), GeM, L2"
    return gcl_network("vgg16", width=0.125), what


register_demo(Demo(
    "gcl", "msls", ("msls-train", "msls-val", "msls-val"), "gem", (("trained", "trained", "demo-gcl", {}),),
    epochs=6, protocol="gcl", network=demo_network,
    about="GCL's recipe (pairs 50/25/25 from the query's city, 2-pair mini-batches, plain SGD lr 1.0 for this "
    "1/8-width net, whole network, validation every step), best step by MSLS-val recall@5",
))  # fmt: skip
