"""The feature store: descriptors in hloc's global-descriptor h5 layout, tagged with the model
that made them ([docs/formats.md#h5](../docs/formats.md#h5)). Shared by ``extract``, ``test`` and
``search``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import NetVladPortError

DESCRIPTOR, IMAGE_SIZE, MODEL_TAG = "global_descriptor", "image_size", "model_sha256"


def h5_names(path: Path) -> set[str]:
    """Image names with a ``global_descriptor`` in an hloc-layout h5 (empty if the file is absent)."""
    import h5py

    names: set[str] = set()
    if not Path(path).exists():
        return names
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, obj: names.add(n.rsplit("/", 1)[0]) if n.endswith(f"/{DESCRIPTOR}") else None)
    except OSError as exc:
        raise NetVladPortError(f"{path}: exists but is not a readable HDF5 file ({exc}); move it away") from None
    return names


def write_h5_descriptor(h5, name: str, desc: np.ndarray, hw: tuple[int, int]) -> None:
    """One image's group: ``global_descriptor`` (D,) and ``image_size`` (W, H), replacing old ones."""
    grp = h5.require_group(name)
    for key in (DESCRIPTOR, IMAGE_SIZE):
        if key in grp:
            del grp[key]
    grp.create_dataset(DESCRIPTOR, data=desc)
    grp.create_dataset(IMAGE_SIZE, data=np.array(hw[::-1]))


def model_fingerprint(model) -> str:
    """sha256 of the weights and layer names: tags stored features with the model that made them."""
    import hashlib

    h = hashlib.sha256()
    for layer in model.layers:
        h.update(f"{layer.name}:{layer.matlab_type};".encode())
        for w in layer.matlab_weights():
            h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def read_h5_descriptors(path: str | os.PathLike, names: list[str]) -> np.ndarray:
    """Rows of ``global_descriptor`` for ``names``, in that order (hloc layout)."""
    import h5py

    with h5py.File(path, "r") as f:
        missing = [n for n in names if n not in f]
        if missing:
            raise KeyError(f"{path}: {len(missing)} images have no descriptor (first: {missing[0]})")
        return np.stack([np.asarray(f[n][DESCRIPTOR], np.float32) for n in names])


def check_model_tag(path: Path, tag: str) -> None:
    """Refuse an existing h5 written by another model (an untagged file is accepted)."""
    import h5py

    if Path(path).exists():
        with h5py.File(path, "r") as f:
            if f.attrs.get(MODEL_TAG, tag) != tag:
                raise NetVladPortError(f"{path}: features of another model; use another --out or delete it")


def set_model_tag(path: Path, tag: str) -> None:
    import h5py

    with h5py.File(path, "a") as f:
        f.attrs[MODEL_TAG] = tag
