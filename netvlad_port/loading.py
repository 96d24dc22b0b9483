"""Load a network by path or release name: MATLAB's ``load(fn, 'net')`` + ``relja_simplenn_tidy``
([docs/matlab_names.md](../docs/matlab_names.md)), for any ``.mat`` encoding, a converted folder, a
GCL / STML / Nanne ``.pth`` checkpoint (``importers``) or a released model. Torch is imported on call,
not at import: ``netvlad_port`` re-exports both functions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .matconvnet.spec import NetSpec


def load_spec(path: str | os.PathLike) -> NetSpec:
    """The validated :class:`~netvlad_port.matconvnet.NetSpec` of a ``.mat`` file, a converted folder,
    or a released model by name (``hub.RELEASES``: downloaded and converted on first use)."""
    from .converted import load_converted
    from .hub import RELEASES, load_release
    from .importers import import_checkpoint, is_checkpoint
    from .matconvnet import read_net

    path = Path(path)
    if not path.exists() and str(path) in RELEASES:
        path = load_release(str(path), progress=True)
    if path.is_dir():
        spec = load_converted(path)
    else:
        spec = import_checkpoint(path) if is_checkpoint(path) else read_net(path)
    check_memory(spec, path)
    return spec


def check_memory(spec: NetSpec, where: str | os.PathLike) -> None:
    """Refuse a network whose smallest image already needs more memory than is free (a pad of 1e5)."""
    from .devices import available_memory, human_bytes
    from .errors import NetFormatError
    from .matconvnet.spec import infer_shapes, layer_bytes, smallest_image

    hw = smallest_image(spec)
    free = available_memory()
    over = [i for i, need in enumerate(layer_bytes(spec, hw)) if need > free]
    if over:
        i = over[0]
        need, layer, (h, w, c) = layer_bytes(spec, hw)[i], spec.layers[i], infer_shapes(spec, hw)[i]
        fields = ", ".join(f"{k} {list(v)}" for k, v in layer.params.items() if k in ("pad", "stride", "pool"))
        raise NetFormatError(f"{where}: {layer.where(i)} ({fields}): even the smallest image ({hw[0]} x {hw[1]}) "
                             f"makes a {h} x {w} x {c} output there, {human_bytes(need)} of memory, "
                             f"{human_bytes(free)} free")  # fmt: skip


BACKENDS = ("auto", "torch", "onnxruntime")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def load(path: str | os.PathLike, normalize: str = "exact", device: str | None = None, backend: str = "auto"):
    """Load a MatConvNet ``.mat`` (any encoding), a converted folder or a released model by name
    (``"vd16_pitts30k_conv5_3_vlad_preL2_intra_white"``) as a :class:`SimpleNN` in eval mode; with
    ``backend="onnxruntime"`` (``auto``: for a ``.onnx`` file), a file ``export-onnx`` wrote, as an
    ``exported.OnnxRuntimeModel``.

    ``normalize="matconvnet-cpu"`` reproduces MatConvNet's CPU ``vl_nnnormalize`` (fast_pow), to
    match features MATLAB computed on a CPU; an exported model must have been exported with it.
    """
    from .errors import NetVladPortError
    from .importers import is_checkpoint

    path = Path(path)
    if backend == "auto":
        backend = "onnxruntime" if path.suffix.lower() == ".onnx" else "torch"
    if backend == "onnxruntime" and path.is_dir():
        raise NetVladPortError(f"{path}: a folder; --backend onnxruntime takes the .onnx file export-onnx wrote")
    if backend == "torch" and path.is_file() and _head(path) == b"PK\x03\x04" and not is_checkpoint(path):
        raise NetVladPortError(f"{path}: a TorchScript file (for torch.jit.load); give the .mat or converted "
                               f"folder it was exported from, or an export-onnx file")  # fmt: skip
    if backend == "onnxruntime":
        from .exported import OnnxRuntimeModel

        model = OnnxRuntimeModel(path)
        if normalize != model.normalize_mode:
            raise NetVladPortError(f"{path}: exported with --normalize {model.normalize_mode}, not {normalize}")
        return model
    if backend != "torch":
        raise NetVladPortError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    from .model import SimpleNN

    model = SimpleNN(load_spec(path), normalize=normalize).eval()
    if device is None:
        return model
    from .devices import resolve_device

    return model.to(resolve_device(device))
