"""MATLAB values as numpy arrays that ``scipy.io.savemat`` and mat-io write: cells, structs,
numbers and strings, shaped as MATLAB holds them."""

from __future__ import annotations

from typing import Any

import numpy as np


def cell(items: list) -> np.ndarray:
    """A 1 x n cell array."""
    arr = np.empty((1, len(items)), dtype=object)
    for i, v in enumerate(items):
        arr[0, i] = v
    return arr


def struct(fields: dict[str, Any]) -> np.ndarray:
    """A 1 x 1 struct with ``fields`` in that order."""
    arr = np.empty((1, 1), dtype=[(k, object) for k in fields])
    for k, v in fields.items():
        arr[0, 0][k] = v
    return arr


def num(v) -> np.ndarray:
    """A double matrix (scalars 1 x 1, vectors 1 x n)."""
    return np.atleast_2d(np.asarray(v, dtype=np.float64))


def string(s: str) -> np.ndarray:
    return np.array([s])


def empty() -> np.ndarray:
    return np.zeros((0, 0))


def false() -> np.ndarray:
    return np.array([[False]])


def weights_cell(weights: list) -> np.ndarray:
    """``weights``: single arrays in a 1 x n cell; vectors (biases) become n x 1."""
    ws = []
    for w in weights:
        w = np.asarray(w, np.float32)
        ws.append(w.reshape(-1, 1) if w.ndim == 1 else w)
    return cell(ws)
