"""A third party's netvlad-port plug-in, installed outside the repository: a graded contrastive loss with
a mining rule of its own (the single hardest negative). docs/extending.md#plug-ins shows this file.

Its distribution declares, in ``entry_points.txt`` (``setup.py``: ``entry_points={"netvlad_port.plugins":
["my-vpr = my_vpr_plugin:register"]}``)::

    [netvlad_port.plugins]
    my-vpr = my_vpr_plugin:register
"""

import torch

from netvlad_port.losses import LossOutput, register_loss
from netvlad_port.train.samplers import SamplerEntry, register_sampler


def hardest_one(ctx, iq):
    """The query's nearest non-trivial positive and its single hardest negative."""
    tup = ctx.mine(iq)
    if tup is not None:
        tup.negatives = tup.negatives[:1]
    return tup


def my_contrastive(q, p, negs, *, labels=None, margin=0.5):
    """Contrastive loss on the positive (label 1) and the negatives (label 0), plain distances."""
    x = torch.cat([p[None], negs])
    d = ((q[None] - x) ** 2).sum(1).clamp_min(1e-12).sqrt()
    y = torch.as_tensor(labels, dtype=d.dtype)
    return LossOutput((y * d**2 / 2 + (1 - y) * (margin - d).clamp_min(0) ** 2 / 2).sum(), len(x))


def register():
    """Called once by netvlad-port when it first needs a name its built-ins lack."""
    register_sampler(SamplerEntry("hardest-one", hardest_one, doc="the single hardest negative"))
    register_loss("my-contrastive", my_contrastive, mining="hardest-one", labels="binary")
