"""MatConvNet SimpleNN networks: the neutral description, the MAT-file reader and writer."""

from .read import read_net
from .spec import LayerSpec, NetSpec, ensure_validated, infer_method, infer_shapes, validate
from .write import write_net

__all__ = [
    "LayerSpec",
    "NetSpec",
    "ensure_validated",
    "infer_method",
    "infer_shapes",
    "validate",
    "read_net",
    "write_net",
]
