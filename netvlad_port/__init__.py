"""netvlad-port: the MATLAB/MatConvNet NetVLAD + SARE (deepIBL) code, exact, in PyTorch."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import NetFormatError, NetVladPortError
from .version import __version__


def load_spec(path: str | os.PathLike):
    """The :class:`~netvlad_port.matconvnet.NetSpec` of a ``.mat`` file or a converted folder."""
    from .converted import load_converted
    from .matconvnet import read_net

    path = Path(path)
    return load_converted(path) if path.is_dir() else read_net(path)


def load(path: str | os.PathLike, normalize: str = "exact", device: str | None = None):
    """Load a MatConvNet ``.mat`` (any encoding) or a converted folder as a :class:`SimpleNN`.

    ``normalize="matconvnet-cpu"`` reproduces MatConvNet's CPU ``vl_nnnormalize`` (fast_pow), to
    match features MATLAB computed on a CPU. The model is in eval mode.
    """
    from .model import SimpleNN

    model = SimpleNN(load_spec(path), normalize=normalize).eval()
    if device is None:
        return model
    from .devices import resolve_device

    return model.to(resolve_device(device))


__all__ = ["__version__", "load", "load_spec", "NetFormatError", "NetVladPortError"]
