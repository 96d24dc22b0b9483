"""netvlad-port: the MATLAB/MatConvNet NetVLAD + SARE (deepIBL) code, exact, in PyTorch."""

from __future__ import annotations

from .errors import NetFormatError, NetVladPortError
from .loading import load, load_spec
from .version import __version__

__all__ = ["__version__", "load", "load_spec", "NetFormatError", "NetVladPortError"]
