"""GCL's recipes ([docs/gcl.md](../../../docs/gcl.md)): plain SGD lr 0.1 (no momentum, no weight decay),
32 pairs a batch, lr / 10 every 25 steps (``src/train.py``; our epoch stands for its 10,000-query step),
and the demo's run on the synthetic MSLS layout."""

from ...demo import Demo, register_demo
from ...train.recipes import register_recipe

register_recipe("gcl", {"loss": "gcl", "learning_rate": 0.1, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 32,
                        "lr_down_freq": 25, "lr_down_factor": 10, "back_prop_to_layer": "conv5_1", "pca_dim": 0},
                "GCL's training: plain SGD lr 0.1, 32 pairs a batch, lr / 10 every 25 epochs")  # fmt: skip
register_recipe("demo-gcl", {"loss": "gcl", "learning_rate": 1.0, "momentum": 0.0, "weight_decay": 0.0,
                             "batch_size": 32, "back_prop_to_layer": "conv5_1", "pca_dim": 0},
                "the gcl demo: plain SGD lr 1.0 for its 1/8-width VGG-GeM")  # fmt: skip

register_demo(Demo(
    "gcl", "msls", ("msls-train", "msls-val", "msls-val"), "preL2_gem", (("trained", "trained", "demo-gcl", {}),),
    epochs=20, protocol="gcl",
    about="GCL (pairs 50/25/25, plain SGD lr 1.0 for this 1/8-width net, conv5_1 up), best epoch on MSLS-val",
))  # fmt: skip
