"""Reading a foreign ``.pth`` checkpoint safely: ``torch.load(..., weights_only=True)`` with an explicit
allow-list, then the model's state_dict out of whichever container the original saved
([docs/pytorch_models.md](../../docs/pytorch_models.md#checkpoints)).

A checkpoint is a pickle. The weights-only unpickler builds tensors, containers, numbers and strings and
refuses every other global; the allow-list adds exactly the numpy scalar that STML's and Nanne's
``recalls`` / ``best_score`` are pickled as (``numpy.core.multiarray.scalar`` of float64). Anything else
-- a pickle that would run code among them -- is refused in one line naming the global, never executed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import NetFormatError

# the containers' model keys, in the order the originals' loaders try them (GCL extract_predictions.py
# tries model_state_dict, then state_dict; Nanne and STML save state_dict)
STATE_KEYS = ("model_state_dict", "state_dict")
INFO_KEYS = ("epoch", "step", "best_score", "recalls", "parallel", "deatt_category_list")


def _allowed_globals() -> list:
    """numpy float64 scalars, under numpy 1's pickle name and numpy 2's own."""
    import numpy as np

    scalar = np._core.multiarray.scalar
    return [(scalar, "numpy.core.multiarray.scalar"), scalar, np.dtype, np.dtypes.Float64DType]


def read_pth(path: str | os.PathLike) -> Any:
    """The unpickled checkpoint (zip or legacy format), tensors on the CPU; one line on any failure."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise NetFormatError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise NetFormatError(f"{path}: an empty file")
    check_crc(path)
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise NetFormatError(f"{path}: refused: {_unpickling_reason(str(exc))}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            UnicodeDecodeError, OverflowError, MemoryError, AssertionError) as exc:  # fmt: skip
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if "central directory" in first or "miniz" in first:
            first = "a damaged or truncated zip: its directory cannot be read"
        raise NetFormatError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def check_crc(path: Path) -> None:
    """A zip checkpoint's CRC32s (``torch.save`` records them), so a flipped bit in the weights is refused
    rather than loaded; a file saved without them (every CRC 0) is let through."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            if all(info.CRC == 0 for info in z.infolist() if info.file_size):
                return
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return  # not a zip (the legacy format), or one torch.load will refuse in its own words
    if bad is not None:
        raise NetFormatError(f"{path}: damaged: {bad} fails its CRC32 check (a flipped bit or a partial copy); "
                             f"get the file again")  # fmt: skip


def _unpickling_reason(message: str) -> str:
    """The weights-only unpickler's long message, cut to what it refused."""
    import re

    if re.search(r"[Uu]nsupported operand", message):
        return "its pickle holds an opcode a weights-only load does not take (a damaged or foreign file)"
    found = re.search(r"(?:unsupported|Unsupported) (?:global|GLOBAL|class)[: ]+(?:GLOBAL )?([\w.]+)", message)
    if found:
        return (f"its pickle asks for {found.group(1)}, which a weights-only load does not run (a checkpoint "
                f"holds tensors, numbers and strings)")  # fmt: skip
    first = next((line.strip() for line in message.splitlines() if line.strip()), "cannot unpickle")
    return f"not a weights-only checkpoint ({first[:200]})"


def model_state(obj: Any, path: str | os.PathLike) -> tuple[dict, dict]:
    """(state_dict with every ``module.`` segment of DataParallel removed, info): the container may be a
    bare state_dict or a dict holding it under ``model_state_dict`` / ``state_dict``; info keeps epoch,
    step, best_score, recalls, parallel and deatt_category_list (numbers as floats), never the optimizer."""
    import torch

    if not isinstance(obj, dict):
        raise NetFormatError(f"{path}: holds a {type(obj).__name__}, not a state_dict or a dict with one")
    if obj and all(torch.is_tensor(v) for v in obj.values()):
        state, container = obj, {}
    else:
        key = next((k for k in STATE_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            has = ", ".join(map(str, list(obj)[:8]))
            raise NetFormatError(f"{path}: no model weights: expected a state_dict, or a dict with "
                                 f"{' or '.join(STATE_KEYS)} (it has {has})")  # fmt: skip
        state, container = obj[key], obj
    out = {}
    for k, v in state.items():
        if not isinstance(k, str) or not torch.is_tensor(v):
            raise NetFormatError(f"{path}: state_dict entry {k!r} is a {type(v).__name__}, not a tensor")
        name = ".".join(p for p in k.split(".") if p != "module")
        if name in out:
            raise NetFormatError(f"{path}: {k!r} and another key both become {name!r} without 'module.'")
        out[name] = v
    return out, {k: _plain(container[k]) for k in INFO_KEYS if k in container}


def _plain(value):
    """Numbers, strings and their containers as JSON-able values (numpy scalars as floats)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)[:100]
