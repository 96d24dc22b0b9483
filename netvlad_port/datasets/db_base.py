"""``dbBase`` and its subclasses: the NetVLAD dataset specification
(docs/matlab.md#datasets).

A dataset is the ``dbStruct`` of a spec file (``pitts30k_test.mat``, ``tokyo247.mat``,
``tokyoTM_val.mat``, ...): image file names relative to ``db_path`` / ``q_path``, 2 x N UTM
coordinates in metres, ``posDistThr`` (metres) and ``nonTrivPosDistSqThr`` (squared metres).
Methods keep MATLAB's semantics: ground-truth positives are db images with squared UTM distance
<= posDistThr^2 (inclusive); training positives satisfy 1 < d^2 <= nonTrivPosDistSqThr.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NetVladPortError

# dbStruct fields in the order of the Pitts spec files (docs/matlab.md#datasets).
DB_STRUCT_FIELDS = (
    "whichSet",
    "dbImageFns",
    "utmDb",
    "qImageFns",
    "utmQ",
    "numImages",
    "numQueries",
    "posDistThr",
    "posDistSqThr",
    "nonTrivPosDistSqThr",
)


NAME_MAX = 255  # bytes in one file name (Linux, macOS, Windows)


class DatasetError(NetVladPortError):
    """A dataset specification or image folder that cannot be used."""


def _names(v, what: str) -> list[str]:
    """A cell of image names; numbers or other values where a name should be are refused."""
    if isinstance(v, str):
        return [v]
    if not isinstance(v, (list, tuple)):
        raise DatasetError(f"{what} must be a cell of image names (text), got {_kind(v)}")
    for i, x in enumerate(v):
        if not isinstance(x, str):
            raise DatasetError(f"{what}: entry {i + 1} is not an image name (text) but {_kind(x)}")
    return list(v)


def _kind(v) -> str:
    return f"{np.asarray(v).dtype} values" if isinstance(v, np.ndarray) else type(v).__name__


def _count(v, what: str) -> int:
    """A whole number of images (``numImages``, ``numQueries``)."""
    a = np.asarray(v)
    if a.dtype.kind not in "iuf" or a.size != 1 or not np.isfinite(a.astype(np.float64)).all() or a.item() % 1:
        raise DatasetError(f"{what} must be one whole number, got {v!r:.60}")
    return int(a.item())


def _inside(names: list[str], what: str) -> list[str]:
    """Refuse image names that leave their root: absolute, or climbing out with '..'."""
    for n in names:
        parts = Path(n.replace("\\", "/")).parts
        depth = 0
        for part in parts:
            depth += -1 if part == ".." else (0 if part in (".", "") else 1)
            if depth < 0:
                break
        if Path(n).is_absolute() or n.startswith(("/", "\\")) or depth < 0:
            raise DatasetError(f"{what}: image name {n!r} leaves the image folder; names must be relative to it")
        longest = max((len(part.encode("utf-8", "replace")) for part in parts), default=0)
        if longest > NAME_MAX or "\0" in n:
            raise DatasetError(f"{what}: image name {n!r:.80} has a part of {longest} bytes or a NUL; a file "
                               f"name holds at most {NAME_MAX} bytes")  # fmt: skip
    return names


def _threshold(v, what: str) -> float:
    if np.asarray(v).dtype.kind in "bc":  # logical or complex: no distance in metres
        raise DatasetError(f"{what} must be a real number, got {np.asarray(v).dtype} {np.asarray(v).ravel()[:3]}")
    try:
        x = np.asarray(v, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise DatasetError(f"{what} must be a number, got {v!r}") from None
    if x.size != 1 or not np.isfinite(x[0]) or x[0] < 0:
        raise DatasetError(f"{what} must be one finite number >= 0, got {np.asarray(v).ravel().tolist()[:3]}")
    return float(x[0])


def _utm(v, what: str) -> np.ndarray:
    if np.iscomplexobj(v):
        raise DatasetError(f"{what} holds complex numbers; expected real UTM coordinates in metres")
    if np.asarray(v).dtype.kind == "b":
        raise DatasetError(f"{what} holds logical values; expected real UTM coordinates in metres")
    try:
        a = np.asarray(v, np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{what} must be 2 x N numbers") from None
    if a.size and not np.isfinite(a).all():
        raise DatasetError(f"{what} holds NaN or infinite coordinates")
    if a.ndim != 2 or 2 not in a.shape:
        raise DatasetError(f"{what} must be 2 x N UTM coordinates, got shape {a.shape}")
    return a if a.shape[0] == 2 else a.T


def load_db_struct(path: str | os.PathLike) -> dict[str, Any]:
    """The ``dbStruct`` of a spec file (MAT v5 or v7.3) as a dict of Python values."""
    from matio import load_from_mat, whosmat

    from ..matconvnet.mat5 import check_mat5
    from ..matconvnet.read import to_python

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset specification file")
    try:
        check_mat5(path)
        names = set(whosmat(str(path)))
        if "dbStruct" not in names:
            raise DatasetError(f"{path}: no variable 'dbStruct' (it holds: {', '.join(sorted(names)) or 'nothing'})")
        raw = load_from_mat(str(path), variable_names=["dbStruct"])["dbStruct"]
    except DatasetError:
        raise
    except NetVladPortError as exc:
        raise DatasetError(str(exc)) from None
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read the MAT file ({type(exc).__name__}: {exc})") from None
    s = to_python(raw)
    if isinstance(s, list) and s and not isinstance(s[0], dict):
        s = dict(zip(DB_STRUCT_FIELDS, s))  # positional (a struct saved as a cell)
    if not isinstance(s, dict):
        raise DatasetError(f"{path}: dbStruct is not a struct")
    return s


def write_db_struct(path: str | os.PathLike, fields: dict[str, Any], version: str = "v7") -> Path:
    """Write a ``dbStruct`` in MATLAB's field order (v7 with scipy, v7.3 with mat-io), atomically."""
    from ..io_utils import atomic_file
    from ..matconvnet.mat import struct as _struct

    def cell(names):
        arr = np.empty((len(names), 1), dtype=object)
        for i, n in enumerate(names):
            arr[i, 0] = np.array([n])
        return arr

    order = list(DB_STRUCT_FIELDS) + [k for k in fields if k not in DB_STRUCT_FIELDS]
    values = {}
    for k in order:
        if k not in fields:
            continue
        v = fields[k]
        if k in ("dbImageFns", "qImageFns"):
            v = cell(v)
        elif isinstance(v, str):
            v = np.array([v])
        else:
            if np.iscomplexobj(v):
                raise DatasetError(f"{path}: {k} holds complex numbers")
            v = np.atleast_2d(np.asarray(v, np.float64))
        values[k] = v
    s = _struct(values)
    path = Path(path)
    with atomic_file(path, suffix=".mat") as tmp:
        if version == "v7":
            import scipy.io

            scipy.io.savemat(tmp, {"dbStruct": s})
        else:
            from matio import save_to_mat

            save_to_mat(str(tmp), {"dbStruct": s}, version="v7.3")
    return path


class DbBase:
    """MATLAB ``dbBase``: a database and queries with UTM ground truth.

    Optional capability, looked up with ``getattr`` (``DbBase`` does not define it):
    ``search_groups() -> (db_group, q_group) | None``, integer arrays with a group per database image
    and per query; retrieval (``retrieval.grouped_search``) then searches each query's group of the
    database only, as for datasets of separate regions whose coordinates may coincide. Such a dataset
    also keeps its ground truth inside the group (``pos_q``, ``nontrivial_pos_q``, ``sample_negs_q``).
    """

    nms_group: int | None = None  # Tokyo 24/7: 12 cutouts per panorama

    def __init__(
        self, name: str, db_path: str | os.PathLike, q_path: str | os.PathLike, db_struct: dict, source: str = ""
    ):
        self.name, self.source = name, source
        self.db_path, self.q_path = Path(db_path), Path(q_path)
        where = source or name
        try:
            self.which_set = str(db_struct.get("whichSet", ""))
            self.db_image_fns = _inside(_names(db_struct["dbImageFns"], f"{where}: dbImageFns"), f"{where}: dbImageFns")
            self.q_image_fns = _inside(_names(db_struct["qImageFns"], f"{where}: qImageFns"), f"{where}: qImageFns")
            self.utm_db = _utm(db_struct["utmDb"], f"{where}: utmDb")
            self.utm_q = _utm(db_struct["utmQ"], f"{where}: utmQ")
            self.pos_dist_thr = _threshold(db_struct["posDistThr"], f"{where}: posDistThr")
            self.non_triv_pos_dist_sq_thr = _threshold(
                db_struct["nonTrivPosDistSqThr"], f"{where}: nonTrivPosDistSqThr"
            )
        except KeyError as exc:
            raise DatasetError(f"{where}: dbStruct has no field {exc.args[0]}") from None
        self.pos_dist_sq_thr = self.pos_dist_thr**2
        self.db_time_stamp = self._stamps(db_struct.get("dbTimeStamp"), len(self.db_image_fns), "dbTimeStamp", where)
        self.q_time_stamp = self._stamps(db_struct.get("qTimeStamp"), len(self.q_image_fns), "qTimeStamp", where)
        for what, n, utm in (("db", len(self.db_image_fns), self.utm_db), ("q", len(self.q_image_fns), self.utm_q)):
            if utm.shape[1] != n:
                raise DatasetError(
                    f"{where}: utm{what.capitalize()} has {utm.shape[1]} columns but there are {n} {what} image names"
                )
        for k, n in (("numImages", self.num_images), ("numQueries", self.num_queries)):
            if k in db_struct and _count(db_struct[k], f"{where}: {k}") != n:
                raise DatasetError(f"{where}: {k} = {_count(db_struct[k], k)} but there are {n} names")
        from scipy.spatial import cKDTree

        self._tree = cKDTree(self.utm_db.T)

    @staticmethod
    def _stamps(v, n: int, what: str, where: str):
        if v is None:
            return None
        a = np.asarray(v).ravel()
        if a.size != n:
            raise DatasetError(f"{where}: {what} has {a.size} values for {n} images")
        return a

    @property
    def num_images(self) -> int:
        return len(self.db_image_fns)

    @property
    def num_queries(self) -> int:
        return len(self.q_image_fns)

    def db_image(self, i: int) -> Path:
        return self.db_path / self.db_image_fns[i]

    def q_image(self, i: int) -> Path:
        return self.q_path / self.q_image_fns[i]

    # --- closePosition: exact radius search, inclusive (docs/matlab.md#positives-and-negatives) --
    def get_pos_ids(self, utm: np.ndarray, sq_thr: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Db ids with squared distance <= ``sq_thr`` (default posDistThr^2), ascending id, and those distances."""
        sq_thr = self.pos_dist_sq_thr if sq_thr is None else sq_thr
        utm = np.asarray(utm, np.float64).reshape(2)
        cand = np.asarray(self._tree.query_ball_point(utm, np.sqrt(sq_thr) * (1 + 1e-9) + 1e-9), dtype=np.int64)
        d2 = ((self.utm_db[:, cand] - utm[:, None]) ** 2).sum(0)
        keep = d2 <= sq_thr
        order = np.argsort(cand[keep], kind="stable")
        return cand[keep][order], d2[keep][order]

    def pos_q(self, iq: int) -> np.ndarray:
        """Ground-truth positives of query ``iq``: db images within posDistThr."""
        return self.get_pos_ids(self.utm_q[:, iq])[0]

    def is_pos_q(self, iq: int, ids) -> np.ndarray:
        """MATLAB ``isPosQ``: which of ``ids`` are ground-truth positives of query ``iq``."""
        return np.isin(np.asarray(ids), self.pos_q(iq))

    def similarity(self, iq: int, ids, kind: str = "binary") -> np.ndarray:
        """Similarity in [0, 1] of db images ``ids`` to query ``iq`` for losses with labels. ``binary``:
        ground-truth positive or not (``isPosQ``); any other kind is the label provider of that name
        (``datasets.labels.LABELS``, filled by plug-ins). Datasets with labels of their own override it."""
        if kind == "binary":
            return self.is_pos_q(iq, ids).astype(np.float32)
        from .labels import LABELS

        return np.asarray(LABELS[kind](self, iq, ids), np.float32)

    def nontrivial_pos_q(self, iq: int) -> np.ndarray:
        """MATLAB ``nontrivialPosQ``: training positives, 1 < d^2 <= nonTrivPosDistSqThr."""
        ids, d2 = self.get_pos_ids(self.utm_q[:, iq], max(self.pos_dist_sq_thr, self.non_triv_pos_dist_sq_thr))
        keep = (d2 > 1) & (d2 <= self.non_triv_pos_dist_sq_thr)
        if self.q_time_stamp is not None and self.db_time_stamp is not None:
            keep &= self.db_time_stamp[ids] != self.q_time_stamp[iq]
        return ids[keep]

    def sample_negs(self, utm: np.ndarray, n: int, rng) -> np.ndarray:
        """MATLAB ``sampleNegs`` (0-based ids): draw ``randsample(numImages, round(1.1 n))``, keep
        those beyond posDistThr, accumulate (``unique``) until n are found, then ``randsample`` n of
        them (docs/matlab.md#positives-and-negatives). ``rng``: a ``MatlabRandom`` for MATLAB's draws,
        a ``NumpyRandom`` or numpy ``Generator`` otherwise. Where MATLAB would loop for ever (fewer
        than n negatives exist) all of them are returned."""
        from ..matlab_random import as_rng, matlab_round

        rng = as_rng(rng)
        pos = self.get_pos_ids(utm)[0]
        n = min(n, self.num_images - len(pos))
        if n <= 0:
            return np.zeros(0, np.int64)
        negs = np.zeros(0, np.int64)
        while len(negs) < n:
            draw = rng.randsample(self.num_images, min(matlab_round(1.1 * n), self.num_images)) - 1
            new = draw[~np.isin(draw, pos)]
            if len(new):
                negs = np.unique(np.concatenate([negs, new]))
        if len(negs) > n:
            negs = rng.randsample(negs, n)
        return negs.astype(np.int64)

    def sample_negs_q(self, iq: int, n: int, rng) -> np.ndarray:
        return self.sample_negs(self.utm_q[:, iq], n, rng)

    # --- evaluation hook (nnSearchPostprocess, docs/matlab.md#evaluation) ------------------
    def retrieve_factor(self) -> int:
        """How many more results ``nn_search_postprocess`` needs than it returns."""
        return 1

    def nn_search_postprocess(self, iq: int, ids: np.ndarray, ds: np.ndarray, n_top: int):
        return ids[:n_top], ds[:n_top]

    def missing_images(self) -> list[Path]:
        paths = [self.db_image(i) for i in range(self.num_images)] + [self.q_image(i) for i in range(self.num_queries)]
        return [p for p in paths if not p.is_file()]

    def check_images(self) -> None:
        """Raise, saying how many and which, when image files are missing."""
        missing = self.missing_images()
        if missing:
            first = ", ".join(str(p) for p in missing[:3])
            raise DatasetError(
                f"{self.source or self.name}: {len(missing)} of {self.num_images + self.num_queries} image files "
                f"are missing (first: {first}); check --root"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}('{self.name}', {self.num_images} db, {self.num_queries} queries, "
            f"posDistThr {self.pos_dist_thr:g} m)"
        )
