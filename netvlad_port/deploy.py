"""Deployable copies of a network: ONNX and TorchScript, each checked against ``model(x)`` before
it is written ([docs/formats.md#onnx-and-torchscript](../docs/formats.md#onnx-and-torchscript)).

The exported graph is the whole of ``model(x)``: N x 3 x H x W float32 RGB in 0..255 in (in 0..1 for a
PyTorch-born network, whose mean and std are applied inside), the mean subtraction, every layer, MATLAB's
K-fastest flatten, and ``cropToDim`` when ``dim`` is given; N x D descriptors out. Batch, height and width
are free. On export both runtimes run the written file on random images of two sizes beside the network;
beyond ``TOLERANCE`` nothing is written. A network's own resize is recorded in the metadata, not in the graph.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import NetVladPortError
from .exported import METADATA, jit_load, onnx_session

FORMATS = ("onnx", "torchscript")
OPSET = 17
TOLERANCE = 1e-4  # max |exported - model| / max |model| over the outputs of one size
VERIFY_SIZES = ((120, 160), (97, 131))  # even and odd sides: MATLAB's ceil-pool padding differs


class Deployable(nn.Module):
    """``model(x)`` without the Python-side checks, as one traceable module (the layers and the mean
    only: TorchScript would try to compile the model's properties)."""

    def __init__(self, model, dim: int | None = None):
        super().__init__()
        self.layers, self.dim = model.layers, dim
        self.register_buffer("average_rgb", model.average_rgb.float().clone())
        self.register_buffer("std_rgb", model.std_rgb.float().clone())
        self.scaled = model.pixel_range == 1.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from .layers import matlab_flatten
        from .layers.netvlad import crop_to_dim

        x = images.to(torch.float32) - self.average_rgb
        if self.scaled:
            x = x / self.std_rgb
        for layer in self.layers:
            x = layer(x)
        return crop_to_dim(matlab_flatten(x), self.dim)


def _relative_difference(got: np.ndarray, ref: np.ndarray) -> float:
    if got.shape != ref.shape:
        return float("inf")
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def _run_exported(path: Path, fmt: str):
    """A function running the exported file: images (numpy) -> descriptors (numpy)."""
    if fmt == "onnx":
        session = onnx_session(path)
        return lambda x: session.run(None, {"images": x})[0]
    module = jit_load(path).eval()
    return lambda x: module(torch.from_numpy(x)).detach().numpy()


def export_model(
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "onnx",
    opset: int = OPSET,
    dim: int | None = None,
    normalize: str = "exact",
    sizes=VERIFY_SIZES,
    tolerance: float = TOLERANCE,
    force: bool = False,
) -> dict:
    """Export the network at ``model_path`` to ``out`` (``fmt`` onnx or torchscript), verify the
    written file on random images of ``sizes``, and return its metadata (also stored in the file)."""
    from .extract import check_dim
    from .io_utils import atomic_file, refuse_existing
    from .loading import load
    from .version import __version__

    if fmt not in FORMATS:
        raise NetVladPortError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        import importlib.util

        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise NetVladPortError(f"export-onnx needs {' and '.join(missing)}: pip install 'netvlad-port[onnx]' "
                                   f"(from a checkout: pip install -e '.[onnx]')")  # fmt: skip
    out = Path(out)
    refuse_existing(out, force, "output file")
    model = load(model_path, normalize=normalize)
    full = check_dim(model, dim)
    for h, w in sizes:
        why = model.input_error(h, w)
        if why:
            raise NetVladPortError(f"{model_path}: a {h}x{w} verification image cannot go through the network ({why})")
    net = Deployable(model, dim).eval()
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.rand(2, 3, h, w, generator=gen) * model.pixel_range for h, w in sizes]
    with torch.no_grad():
        refs = [net(x).numpy() for x in inputs]
    meta = {
        "netvlad_port": __version__,
        "source": Path(model_path).name,
        "model_sha256": model.fingerprint,
        "normalize": normalize,
        "dim": dim,
        "output_dim": dim or full,
        "input": f"images: N x 3 x H x W float32, {input_text(model)}",
        "pixel_range": model.pixel_range,
        "resize": model.resize.as_meta() if model.resize else None,
        "output": "descriptors: N x D float32",
        "format": fmt,
        "opset": opset if fmt == "onnx" else None,
        "tolerance": tolerance,
    }
    with atomic_file(out) as tmp:
        _write(net, inputs[0], tmp, fmt, opset, out)
        run = _run_exported(tmp, fmt)
        diffs = {f"{h}x{w}": _relative_difference(run(x.numpy()), ref) for (h, w), x, ref in zip(sizes, inputs, refs)}
        meta["max_relative_difference"] = diffs
        meta["verified_with"] = _runtime(fmt)
        worst = max(diffs, key=diffs.get)
        if not diffs[worst] <= tolerance:
            raise NetVladPortError(f"{out}: the exported {fmt} model differs from the network by {diffs[worst]:.3g} "
                                   f"(relative) at {worst}, more than {tolerance:g}; nothing written")  # fmt: skip
        _add_metadata(tmp, fmt, meta)
    return meta


def input_text(model) -> str:
    if model.pixel_range == 255.0:
        return "RGB 0..255 (the mean is subtracted inside)"
    mean, std = model.average_rgb.flatten().tolist(), model.std_rgb.flatten().tolist()
    resize = f"; resize images to {model.resize} first" if model.resize else ""
    return f"RGB 0..1 (ToTensor; Normalize mean {mean} std {std} inside){resize}"


def _write(net: nn.Module, example: torch.Tensor, path: Path, fmt: str, opset: int, out: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        try:
            if fmt == "onnx":
                torch.onnx.export(net, (example,), str(path), opset_version=opset, input_names=["images"],
                                  output_names=["descriptors"], dynamo=False,
                                  dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                                "descriptors": {0: "batch"}})  # fmt: skip
            else:
                torch.jit.save(torch.jit.trace(net, (example,), check_trace=False), str(path))
        except NetVladPortError:
            raise
        except Exception as exc:
            raise NetVladPortError(f"{out}: the {fmt} export failed ({type(exc).__name__}: {exc})") from None


def _runtime(fmt: str) -> str:
    if fmt == "onnx":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    return f"torch.jit {torch.__version__}"


def _add_metadata(path: Path, fmt: str, meta: dict) -> None:
    text = json.dumps(meta, sort_keys=True)
    if fmt == "onnx":
        import onnx

        proto = onnx.load(str(path))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA, text
        onnx.save(proto, str(path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14: torch.jit is deprecated
            torch.jit.save(jit_load(path), str(path), _extra_files={f"{METADATA}.json": text})
