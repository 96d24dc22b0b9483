"""Dataset families by name: one registry used by ``test``, ``train``, ``cluster`` and ``pca``.

A name is a family and a split -- ``pitts30k-test``, ``pitts30k_test`` and ``Pitts30k-test`` are the
same -- or a family without splits (``tokyo247``). Anything else may be a dbStruct spec ``.mat`` or a
VG-format folder. Register a family with :func:`register_dataset`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..registry import Registry
from .db_base import DatasetError, DbBase


def _key(name: str) -> str:
    return name.lower().replace("_", "-")


@dataclass(frozen=True)
class DatasetFamily:
    """``open(split, root, spec_dir)`` returns the dataset (``split`` None when ``splits`` is empty);
    ``recipe`` names the training recipe a run on it uses unless one is given (``train/recipes.py``)."""

    name: str
    open: Callable[[str | None, Path, Path | None], DbBase]
    splits: tuple[str, ...] = ()
    recipe: str | None = None

    def names(self) -> str:
        return f"{self.name}-{{{','.join(self.splits)}}}" if self.splits else self.name


DATASETS: Registry[DatasetFamily] = Registry("dataset", builtins="netvlad_port.datasets", key=_key)


def register_dataset(
    name: str, open: Callable, splits: tuple[str, ...] = (), recipe: str | None = None, replace: bool = False
) -> DatasetFamily:
    return DATASETS.register(name, DatasetFamily(name, open, tuple(splits), recipe), replace=replace)


def dataset_names(split: str | None = None) -> str:
    """The accepted dataset names (only ``split``'s, when given), for help texts and errors."""
    if split:
        names = [f"{f.name}-{split}" for _, f in DATASETS.items() if split in f.splits]
    else:
        names = [f.names() for _, f in DATASETS.items()]
    return ", ".join(names) + ", a spec .mat, or a VG-format folder"


def family_of(name: str) -> tuple[DatasetFamily, str | None]:
    """(family, split) of a dataset name; a family name alone gives split None."""
    key = _key(name)
    family = DATASETS.get(key)
    if family is not None:
        return family, None
    head, _, split = key.rpartition("-")
    family = DATASETS.get(head) if head else None
    if family is None:
        raise DatasetError(f"unknown dataset {name!r}: expected {dataset_names()}")
    if split not in [s.lower() for s in family.splits]:
        raise DatasetError(f"{name!r}: {family.name} has the splits {', '.join(family.splits) or 'none'}")
    return family, family.splits[[s.lower() for s in family.splits].index(split)]


def _is_family(name: str) -> bool:
    try:
        family_of(name)
    except DatasetError:
        return False
    return True


def open_dataset(name: str, root: str | os.PathLike | None = None, spec_dir: str | os.PathLike | None = None,
                 pos_dist_thr: float | None = None) -> DbBase:  # fmt: skip
    """A dataset by name (see :func:`dataset_names`), a dbStruct spec ``.mat`` or a VG folder;
    ``pos_dist_thr``: the positives' radius in metres of a VG folder (default 25; the others have theirs)."""
    from .db_base import load_db_struct
    from .folders import from_vg_folder

    root = Path(root or ".")
    path = Path(name)
    if pos_dist_thr is not None:
        if path.suffix == ".mat" or not path.is_dir() or _is_family(name):
            raise DatasetError(f"--positive-dist-threshold: for VG-format folders only; {name} has its own "
                               f"posDistThr")  # fmt: skip
        return from_vg_folder(path, pos_dist_thr)
    if path.suffix == ".mat":  # image names relative to root, or to root/images and root/queries (Pitts layout)
        db_path, q_path = ((root / "images", root / "queries") if (root / "images").is_dir() and
                           (root / "queries").is_dir() else (root, root))  # fmt: skip
        return DbBase(path.stem, db_path, q_path, load_db_struct(path), str(path))
    try:
        family, split = family_of(name)
    except DatasetError:
        if path.is_dir():
            return from_vg_folder(path)
        raise
    if family.splits and split is None:
        raise DatasetError(f"{name!r}: name a split ({family.names()})")
    return family.open(split, root, Path(spec_dir) if spec_dir else None)


def training_splits(
    name: str, root: str | os.PathLike | None = None, spec_dir: str | os.PathLike | None = None
) -> tuple[DbBase, DbBase, DatasetFamily]:
    """(train, val, family) of a family with train and val splits (``pitts30k``, ``tokyoTM``, ...)."""
    family, split = family_of(name)
    trainable = [n for n, f in DATASETS.items() if {"train", "val"} <= set(f.splits)]
    if split is not None or not {"train", "val"} <= set(family.splits):
        raise DatasetError(f"{name!r}: training needs a family with train and val splits: {', '.join(trainable)}")
    root = Path(root or ".")
    spec_dir = Path(spec_dir) if spec_dir else None
    return family.open("train", root, spec_dir), family.open("val", root, spec_dir), family
