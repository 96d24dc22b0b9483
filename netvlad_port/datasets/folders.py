"""Datasets in the formats of the newer PyTorch tools
(docs/formats.md#dataset-specifications).

* The VG benchmark's folders (gmberton/VPR-datasets-downloader): ``database/`` and ``queries/``
  with names ``@utm_east@utm_north@zone@letter@lat@lon@...@.jpg``.
* Patch-NetVLAD's ground truth: an ``.npz`` with ``utmQ``, ``utmDb`` (N x 2) and ``posDistThr``,
  with the image lists in row order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..images import IMAGE_EXTENSIONS
from .db_base import DatasetError, DbBase

NON_TRIVIAL_SQ = 100.0  # 10 m, the NetVLAD paper's training positives (docs/matlab.md#datasets)


def _vg_utm(path: Path) -> tuple[float, float]:
    parts = path.name.split("@")
    try:
        return float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise DatasetError(f"{path}: not a VG-format name (@utm_east@utm_north@...@.jpg)") from None


def vg_dataset_name(root: Path) -> str:
    """The dataset a VG split folder belongs to: ``pitts30k`` for ``.../pitts30k/images/test``, as
    VPR-datasets-downloader lays them out; else the folder's own name."""
    root = root.resolve()
    if root.name in ("train", "val", "test") and root.parent.name == "images" and root.parent.parent.name:
        return root.parent.parent.name
    return root.name


def from_vg_folder(root: str | os.PathLike, pos_dist_thr: float = 25.0, name: str | None = None) -> DbBase:
    """``root/database`` and ``root/queries`` (e.g. ``images/test``) with UTM in the file names; named
    after the dataset folder (:func:`vg_dataset_name`) unless ``name`` is given."""
    root = Path(root)
    if not pos_dist_thr > 0:
        raise DatasetError(f"{root}: the positives' radius must be above 0 m (got {pos_dist_thr:g})")
    lists = {}
    for sub in ("database", "queries"):
        folder = root / sub
        if not folder.is_dir():
            raise DatasetError(f"{folder}: missing (a VG-format split has database/ and queries/)")
        lists[sub] = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not lists[sub]:
            raise DatasetError(f"{folder}: no images")
    s = {"whichSet": root.name, "posDistThr": pos_dist_thr, "nonTrivPosDistSqThr": NON_TRIVIAL_SQ}
    for sub, key, utm in (("database", "dbImageFns", "utmDb"), ("queries", "qImageFns", "utmQ")):
        s[key] = [p.relative_to(root / sub).as_posix() for p in lists[sub]]
        s[utm] = np.array([_vg_utm(p) for p in lists[sub]]).T
    return DbBase(name or vg_dataset_name(root), root / "database", root / "queries", s, str(root))


def from_npz(
    npz: str | os.PathLike,
    db_list: str | os.PathLike,
    q_list: str | os.PathLike,
    db_root: str | os.PathLike,
    q_root: str | os.PathLike | None = None,
    name: str | None = None,
) -> DbBase:
    """Patch-NetVLAD ground truth (``utmQ``, ``utmDb``, ``posDistThr``) with its image lists."""
    npz = Path(npz)
    try:
        gt = np.load(npz)
        utm_q, utm_db, thr = gt["utmQ"], gt["utmDb"], float(np.asarray(gt["posDistThr"]).ravel()[0])
    except (OSError, KeyError, ValueError, EOFError, IndexError) as exc:
        raise DatasetError(f"{npz}: not a ground-truth .npz with utmQ, utmDb, posDistThr ({exc})") from None
    db_names = [l.strip() for l in Path(db_list).read_text().splitlines() if l.strip()]
    q_names = [l.strip() for l in Path(q_list).read_text().splitlines() if l.strip()]
    s = {
        "whichSet": npz.stem,
        "dbImageFns": db_names,
        "qImageFns": q_names,
        "utmDb": np.asarray(utm_db).T,
        "utmQ": np.asarray(utm_q).T,
        "posDistThr": thr,
        "nonTrivPosDistSqThr": NON_TRIVIAL_SQ,
    }
    return DbBase(name or npz.stem, db_root, q_root or db_root, s, str(npz))
