"""The feature store: descriptors in hloc's global-descriptor h5 layout (or .bin / .npy), tagged with
the model and the options that made them ([docs/formats.md#h5](../docs/formats.md#h5)). Shared by
``extract``, ``test`` and ``search``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import NetVladPortError

DESCRIPTOR, IMAGE_SIZE = "global_descriptor", "image_size"
TAG = "netvlad_port"  # h5 attribute: the JSON descriptor tag
MODEL_TAG = "model_sha256"  # the attribute older versions wrote


def h5_names(path: Path) -> set[str]:
    """Image names with a ``global_descriptor`` in an hloc-layout h5 (empty if the file is absent)."""
    import h5py

    names: set[str] = set()
    if not Path(path).exists():
        return names
    try:
        with h5py.File(path, "r") as f:
            # visit (names only) is 4.6x faster than visititems at 200,000 images: no object is opened
            f.visit(lambda n: names.add(n.rsplit("/", 1)[0]) if n.endswith(f"/{DESCRIPTOR}") else None)
    except OSError as exc:
        raise NetVladPortError(f"{path}: exists but is not a readable HDF5 file ({exc}); move it away") from None
    return names


# HDF5 1.8's group format for files we create: an old-style group keeps its link names in one local heap, which
# past the metadata cache's 32 MiB (~260,000 SF-XL names, 1.4M short ones) is written out on every insertion
# and writing crawls; 1.8's groups index names in a B-tree (HDF5 >= 1.8 reads them: h5py, MATLAB R2011a on).
H5_WRITE = {"libver": ("v108", "latest")}


def write_h5_descriptor(h5, name: str, desc: np.ndarray, hw: tuple[int, int]) -> None:
    """One image's group: ``global_descriptor`` (D,) and ``image_size`` (W, H), replacing old ones."""
    grp = h5.require_group(name)
    for key in (DESCRIPTOR, IMAGE_SIZE):
        if key in grp:
            del grp[key]
    grp.create_dataset(DESCRIPTOR, data=desc)
    grp.create_dataset(IMAGE_SIZE, data=np.array(hw[::-1]))


def model_fingerprint(model) -> str:
    """The model's ``fingerprint``: the sha256 that tags stored features with the model that made them
    (:attr:`SimpleNN.fingerprint`; an exported ``exported.OnnxRuntimeModel`` carries its source network's)."""
    fingerprint = getattr(model, "fingerprint", None)
    if not fingerprint:
        raise NetVladPortError(f"{type(model).__name__}: the model has no fingerprint to tag its features with")
    return fingerprint


def read_h5_descriptors(path: str | os.PathLike, names: list[str]) -> np.ndarray:
    """Rows of ``global_descriptor`` for ``names``, in that order (hloc layout)."""
    import h5py

    with h5py.File(path, "r") as f:
        missing = [n for n in names if n not in f]
        if missing:
            raise KeyError(f"{path}: {len(missing)} images have no descriptor (first: {missing[0]})")
        return np.stack([np.asarray(f[n][DESCRIPTOR], np.float32) for n in names])


def images_stamp(root: str | os.PathLike, names) -> dict:
    """What a set of image files is: their resolved root, how many, and a sha256 over each name, byte size
    and modification time. In a descriptor tag it keeps features of other images with the same names
    (another ``--root``, another VG folder called ``test``) from ever being reused."""
    import hashlib

    h = hashlib.sha256()
    for n in names:
        try:
            st = (Path(root) / n).stat()
            h.update(f"{n}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{n}\0missing\n".encode())
    return {"root": str(Path(root).resolve()), "count": len(names), "files_sha256": h.hexdigest()}


def descriptor_tag(model, **options) -> dict:
    """What made a descriptor file: the model's fingerprint, its normalize mode and every option that
    changes descriptors (dim, resize_shorter, precision, half)."""
    tag = {"model_sha256": model_fingerprint(model), "normalize": model.normalize_mode, **options}
    if getattr(model, "backend", "torch") != "torch":
        tag["backend"] = model.backend  # its numbers differ in the last bits: never mixed with torch's
    return tag


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def read_tag(path: Path, fmt: str) -> dict | None:
    """The tag of an existing output (h5 attribute, or the sidecar JSON of .bin / .npy); None if untagged."""
    import h5py

    if fmt == "h5":
        try:
            with h5py.File(path, "r") as f:
                if TAG in f.attrs:
                    return json.loads(f.attrs[TAG])
                return {"model_sha256": f.attrs[MODEL_TAG]} if MODEL_TAG in f.attrs else None
        except (OSError, ValueError) as exc:
            raise NetVladPortError(f"{path}: exists but is not a readable HDF5 file ({exc}); move it away") from None
    side = sidecar_path(path)
    try:
        return json.loads(side.read_text()) if side.is_file() else None
    except (OSError, ValueError) as exc:
        raise NetVladPortError(f"{side}: unreadable tag ({exc})") from None


def check_tag(path: Path, fmt: str, tag: dict, force: bool = False) -> None:
    """Refuse an existing output made by another model or with other options (``force``: delete it)."""
    path = Path(path)
    if not path.exists():
        return
    old = read_tag(path, fmt)
    if old == tag:
        return
    if force:
        path.unlink()
        sidecar_path(path).unlink(missing_ok=True)
        return
    if old is None:
        why = "descriptors without a netvlad-port tag (another tool or an older version)"
    elif old.get("images", tag.get("images")) != tag.get("images"):
        why = (f"descriptors of other image files ({old['images'].get('root')}, {old['images'].get('count')} images), "
               f"not of {tag['images']['root']} as they are now")  # fmt: skip
    elif old.get("model_sha256") != tag["model_sha256"]:
        why = f"features of another model ({old.get('model_sha256', '?')[:12]}, not {tag['model_sha256'][:12]})"
    else:
        keys = list(tag) + [k for k in old if k not in tag]
        diff = ", ".join(f"{k} {old.get(k)!r}, not {tag.get(k)!r}" for k in keys if old.get(k) != tag.get(k))
        why = f"descriptors made with other options ({diff})"
    raise NetVladPortError(f"{path}: holds {why}; use another output or --force to replace it")


def write_tag(path: Path, fmt: str, tag: dict, h5=None) -> None:
    """Tag an output: an attribute of the open h5, or the sidecar JSON (atomic) of .bin / .npy."""
    if fmt == "h5":
        h5.attrs[TAG] = json.dumps(tag, sort_keys=True)
        return
    from .io_utils import atomic_file

    with atomic_file(sidecar_path(Path(path))) as tmp:
        tmp.write_text(json.dumps(tag, sort_keys=True, indent=1) + "\n")
