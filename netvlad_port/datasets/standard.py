"""The datasets of the NetVLAD code: ``dbPitts``, ``dbTokyo247``, ``dbTokyoTimeMachine``
([docs/matlab.md#datasets](../../docs/matlab.md#datasets)).

Spec files live in ``spec_dir`` (MATLAB ``paths.dsetSpecDir``), images under ``root``
(``paths.dsetRootPitts`` etc.) with the layout of ``localPaths.m``: Pittsburgh ``images/`` and
``queries/``, Tokyo 24/7 ``images/`` and ``query/``, TokyoTM ``images/`` for both.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .db_base import DatasetError, DbBase, load_db_struct
from .registry import register_dataset


def _spec(spec_dir, root, name: str) -> Path:
    folders = [Path(f) for f in (spec_dir, root, Path(root) / "datasets" if root else None) if f is not None]
    for folder in folders:
        if (folder / f"{name}.mat").is_file():
            return folder / f"{name}.mat"
    raise DatasetError(
        f"{name}.mat: dataset specification not found (looked in {', '.join(map(str, folders)) or 'nothing'}); pass "
        f"--spec-dir, the folder of the dbStruct .mat files, and --root, the dataset's folder (images/, queries/)"
    )


class DbPitts(DbBase):
    """MATLAB ``dbPitts(fullSize, whichSet)``: Pitts30k (default) or Pitts250k, train/val/test."""

    def __init__(
        self,
        pitts250k: bool = False,
        which_set: str = "test",
        root: str | os.PathLike = ".",
        spec_dir: str | os.PathLike | None = None,
    ):
        if which_set not in ("train", "val", "test"):
            raise DatasetError(f"which_set must be train, val or test, got {which_set!r}")
        name = f"pitts{'250k' if pitts250k else '30k'}_{which_set}"
        spec = _spec(spec_dir, root, name)
        super().__init__(name, Path(root) / "images", Path(root) / "queries", load_db_struct(spec), str(spec))


class DbTokyo247(DbBase):
    """MATLAB ``dbTokyo247``: 315 queries, 75,984 db cutouts, 12 per panorama (NMS at evaluation)."""

    nms_group = 12

    def __init__(self, root: str | os.PathLike = ".", spec_dir: str | os.PathLike | None = None):
        spec = _spec(spec_dir, root, "tokyo247")
        super().__init__("tokyo247", Path(root) / "images", Path(root) / "query", load_db_struct(spec), str(spec))
        self._png_fallback()

    def _png_fallback(self) -> None:
        """tokyo247.mat lists the db as .jpg but it ships as .png (netvlad issue #50): use the .png
        when only it exists."""
        if self.num_images and not self.db_image(0).is_file() and self.db_image(0).with_suffix(".png").is_file():
            self.db_image_fns = [str(Path(f).with_suffix(".png")) for f in self.db_image_fns]

    def retrieve_factor(self) -> int:
        return self.nms_group

    def nn_search_postprocess(self, iq, ids, ds, n_top):
        """Keep the best-ranked cutout per panorama (id // 12, 0-based ids), then the first n_top."""
        pano = np.asarray(ids) // self.nms_group
        _, first = np.unique(pano, return_index=True)
        keep = np.sort(first)
        return ids[keep][:n_top], ds[keep][:n_top]


class DbTokyoTimeMachine(DbBase):
    """MATLAB ``dbTokyoTimeMachine(whichSet)``: queries drawn from the database; results with the
    query's timestamp are dropped at evaluation, and never used as training positives."""

    def __init__(
        self, which_set: str = "val", root: str | os.PathLike = ".", spec_dir: str | os.PathLike | None = None
    ):
        if which_set not in ("train", "val"):
            raise DatasetError(f"which_set must be train or val, got {which_set!r}")
        name = f"tokyoTM_{which_set}"
        spec = _spec(spec_dir, root, name)
        s = load_db_struct(spec)
        for k in ("dbTimeStamp", "qTimeStamp"):
            if k not in s:
                raise DatasetError(f"{spec}: dbStruct has no field {k} (TokyoTM needs timestamps)")
        super().__init__(name, Path(root) / "images", Path(root) / "images", s, str(spec))

    def retrieve_factor(self) -> int:
        return 10

    def nn_search_postprocess(self, iq, ids, ds, n_top):
        keep = self.db_time_stamp[ids] != self.q_time_stamp[iq]
        return ids[keep][:n_top], ds[keep][:n_top]


register_dataset(
    "pitts30k",
    lambda split, root, spec_dir: DbPitts(False, split, root, spec_dir),
    ("train", "val", "test"),
    recipe="deepibl-pitts30k",
)
register_dataset(
    "pitts250k",
    lambda split, root, spec_dir: DbPitts(True, split, root, spec_dir),
    ("train", "val", "test"),
    recipe="deepibl-pitts250k",
)
register_dataset("tokyo247", lambda split, root, spec_dir: DbTokyo247(root, spec_dir))
register_dataset(
    "tokyoTM",
    lambda split, root, spec_dir: DbTokyoTimeMachine(split, root, spec_dir),
    ("train", "val"),
    recipe="deepibl-tokyotm",
)
