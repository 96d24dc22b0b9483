"""The built-in importers, registered on import: Nanne's pytorch-NetVlad and torchvision's ImageNet
classifiers (the GCL and sTML wings register theirs)."""

from . import nanne, torchvision_weights  # noqa: F401
