"""PyTorch modules with MatConvNet / NetVLAD layer semantics, one per registered layer type.

Importing this package registers the built-in types (``simplenn``: conv, relu, pool, normalize;
``netvlad``: the NetVLAD classes; ``pooling``: GeM). Plug-ins register theirs (the sTML wing's attention modules).
:func:`build_layer` makes the module of any registered type.
"""

from ..matconvnet.spec import LayerSpec, layer_type
from . import backbones
from .base import MatLayer, matlab_flatten
from .netvlad import WHOLE_L2_EPS, TorchNetVLAD, TotalAvgPool, TotalMaxPool, VLADCore, WholeL2Normalize
from .pooling import GeM
from .simplenn import NORMALIZE_MODES, Conv, Normalize, Pool, ReLU


def build_layer(spec: LayerSpec, in_channels: int) -> MatLayer:
    """The module for one validated :class:`LayerSpec` (``in_channels``: what the previous layer gives)."""
    return layer_type(spec.type).module(spec, in_channels)


__all__ = [
    "MatLayer",
    "matlab_flatten",
    "build_layer",
    "WHOLE_L2_EPS",
    "NORMALIZE_MODES",
    "Conv",
    "ReLU",
    "Pool",
    "Normalize",
    "VLADCore",
    "TorchNetVLAD",
    "backbones",
    "WholeL2Normalize",
    "TotalMaxPool",
    "TotalAvgPool",
    "GeM",
]
