"""Resumable checkpoints without pickle, file I/O only ([docs/formats.md#checkpoint](../../docs/formats.md#checkpoint)):
``net/`` (a converted folder), ``state.safetensors`` (tensors: SGD momentum buffers, the train
feature cache) and ``state.json`` (everything else of ``Trainer.state_dict()``). Written atomically:
a run killed at any point leaves the previous checkpoint intact. Also MATLAB's start features
(``dbCheckpoint0`` / ``qCheckpoint0``: float32 .bin, D x N column-major)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..converted import load_converted, save_converted
from ..errors import NetVladPortError
from ..io_utils import atomic_dir
from ..matconvnet import NetSpec

STATE_JSON, STATE_TENSORS, NET_DIR = "state.json", "state.safetensors", "net"


def save_checkpoint(folder: Path, spec: NetSpec, state: dict, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    with atomic_dir(folder, force=True) as tmp:
        save_converted(spec, tmp / NET_DIR)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(state))


def load_checkpoint(folder: Path) -> tuple[NetSpec, dict, dict[str, np.ndarray]]:
    """(network, state, tensors) of a checkpoint folder."""
    from safetensors.numpy import load_file

    if not (folder / STATE_JSON).is_file():
        raise NetVladPortError(f"{folder}: no checkpoint to resume from")
    try:
        state = json.loads((folder / STATE_JSON).read_text())
        tensors = load_file(str(folder / STATE_TENSORS))
    except (OSError, ValueError) as exc:
        raise NetVladPortError(f"{folder}: unreadable checkpoint ({exc})") from None
    return load_converted(folder / NET_DIR), state, tensors


def read_start_feats(db, db_fn: str, q_fn: str, dim: int) -> np.ndarray | None:
    """The start network's features of ``db`` (db rows, then queries) from MATLAB's two .bin files, or
    None when they are not both there (then they are computed, and written when named)."""
    paths = [Path(db_fn), Path(q_fn)] if db_fn and q_fn else []
    if (db_fn or q_fn) and not paths:
        raise NetVladPortError("dbCheckpoint0 and qCheckpoint0 (and their val pair) go together")
    if not paths or not all(p.is_file() for p in paths):
        return None
    parts = []
    for path, n in zip(paths, (db.num_images, db.num_queries)):
        flat = np.fromfile(path, np.float32)
        if flat.size != n * dim:
            raise NetVladPortError(f"{path}: {flat.size} values; expected {n} images x {dim} dimensions")
        parts.append(flat.reshape(n, dim))
    return np.concatenate(parts)


def write_start_feats(db, db_fn: str, q_fn: str, feats: np.ndarray) -> None:
    """Write the start features as MATLAB does (``fwrite`` float32), atomically."""
    from ..io_utils import atomic_file

    for path, rows in zip((Path(db_fn), Path(q_fn)), (feats[: db.num_images], feats[db.num_images :])):
        with atomic_file(path) as tmp:
            np.ascontiguousarray(rows, np.float32).tofile(tmp)
