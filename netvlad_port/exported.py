"""Exported networks read back: the metadata ``export_model`` stores in an ONNX or TorchScript file, an
onnxruntime session, and :class:`OnnxRuntimeModel`, which ``load(..., backend="onnxruntime")`` returns
([docs/formats.md#onnx-and-torchscript](../docs/formats.md#onnx-and-torchscript)). Writing and checking
them is ``deploy.py``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import NetVladPortError
from .images import Resize

METADATA = "netvlad_port"  # ONNX metadata_props key / TorchScript extra file (JSON)


def jit_load(path: str | os.PathLike, extra_files: dict | None = None):
    """``torch.jit.load`` (deprecated in favour of torch.export since torch 2.10, still supported)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 says it as a FutureWarning
        return torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files or {})


def onnx_session(path: str | os.PathLike):
    try:
        import onnxruntime as ort
    except ImportError:
        raise NetVladPortError("onnxruntime is not installed: pip install -e '.[onnx]'") from None
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise NetVladPortError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata :func:`export_model` stored in an ONNX or TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise NetVladPortError(f"{path}: no such file")
    try:
        if path.suffix == ".onnx":
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            return json.loads(props[METADATA])
        extra = {f"{METADATA}.json": ""}
        jit_load(path, extra)
        return json.loads(extra[f"{METADATA}.json"])
    except (KeyError, ValueError):
        raise NetVladPortError(f"{path}: no netvlad-port metadata (not written by export-onnx)") from None
    except Exception as exc:
        raise NetVladPortError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None


class OnnxRuntimeModel(nn.Module):
    """An exported ONNX network in onnxruntime, with what extraction needs of a model: call it on
    N x 3 x H x W RGB 0..255 (0..1 for a PyTorch-born network), its descriptors come back, and it resizes
    images as its source did (``resize``). Tagged by ``fingerprint`` (the source network's
    :attr:`SimpleNN.fingerprint`, from the file's metadata) and ``backend = onnxruntime``, so its features
    never mix with the torch backend's."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        self.session = onnx_session(self.path)
        self.normalize_mode = self.meta["normalize"]
        self.fingerprint: str = self.meta["model_sha256"]
        self.pixel_range = float(self.meta.get("pixel_range", 255.0))  # what the graph takes, as SimpleNN
        self.resize = Resize.from_meta(self.meta.get("resize"))

    def input_error(self, h: int, w: int) -> str | None:
        return None

    def from_rgb255(self, images: torch.Tensor) -> torch.Tensor:
        """Images read as RGB 0..255 in the range the graph takes (``SimpleNN.from_rgb255``)."""
        from .model import to_pixel_range

        return to_pixel_range(images, self.pixel_range)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {"images": x})[0])
