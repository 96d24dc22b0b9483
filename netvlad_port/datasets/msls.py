"""Mapillary Street-Level Sequences (MSLS) in its released layout, as ``mapillary_sls``
(``datasets/msls.py``) and GCL (``src/datasets.py``) read it ([docs/gcl.md](../../docs/gcl.md#msls)).

``ROOT/train_val/<city>/{database,query}/`` each hold ``postprocessed.csv`` (``key``, ``easting``,
``northing``), ``raw.csv`` (``key``, compass angle ``ca`` in degrees, ``pano``) and ``images/<key>.jpg``;
GCL's graded ground truth, where the user has it, is ``ROOT/train_val/<city>_gt.h5`` with datasets
``fov`` (graded) and ``sim`` (binary), one row per query and one column per database image of the city,
in csv row order. Panoramas are left out of queries and database, as both originals do. Retrieval and
ground truth stay inside a city: a city's positions are shifted ``CITY_SHIFT`` metres north per city
index, so no two cities neighbour each other, and the search runs per city (``db_group``).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from .db_base import DatasetError, DbBase
from .registry import register_dataset

# mapillary_sls datasets/msls.py default_cities; the test cities have no public positions.
MSLS_CITIES = {
    "train": ("trondheim", "london", "boston", "melbourne", "amsterdam", "helsinki", "tokyo", "toronto", "saopaulo",
              "moscow", "zurich", "paris", "bangkok", "budapest", "austin", "berlin", "ottawa", "phoenix", "goa",
              "amman", "nairobi", "manila"),
    "val": ("cph", "sf"),
}  # fmt: skip
POS_DIST_THR = 25.0  # GCL evaluates with posDistThr=25 (src/validate.py:22); MSLS's negDistThr
NON_TRIV_POS_DIST_SQ_THR = 100.0  # MSLS's training posDistThr, 10 m
CITY_SHIFT = 1e7  # metres north between cities: more than any UTM northing range
GT_KEYS = {"graded": "fov", "binary": "sim"}


def _read_csv(path: Path, columns: tuple[str, ...]) -> dict[str, list[str]]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing (an MSLS city folder has query/ and database/ with this file)")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DatasetError(f"{path}: empty")
    header = rows[0]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DatasetError(f"{path}: no column {missing[0]!r} (header: {','.join(header)})")
    cols = {c: header.index(c) for c in columns}
    out: dict[str, list[str]] = {c: [] for c in columns}
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DatasetError(f"{path}: line {i} has {len(row)} fields, the header {len(header)}")
        for c, j in cols.items():
            out[c].append(row[j])
    return out


def _numbers(values: list[str], path: Path, column: str) -> np.ndarray:
    try:
        a = np.array([float(v) for v in values])
    except ValueError:
        raise DatasetError(f"{path}: column {column!r} holds a non-number") from None
    if not np.isfinite(a).all():
        raise DatasetError(f"{path}: column {column!r} holds NaN or infinite values")
    return a


def read_msls_folder(folder: Path) -> dict[str, np.ndarray]:
    """``key``, ``easting``, ``northing``, ``ca`` (degrees) and ``pano`` of one ``query/`` or
    ``database/`` folder, all rows, in csv order; the two files must list the same keys."""
    pp = _read_csv(folder / "postprocessed.csv", ("key", "easting", "northing"))
    raw = _read_csv(folder / "raw.csv", ("key", "ca", "pano"))
    if pp["key"] != raw["key"]:
        row = next((i for i, (a, b) in enumerate(zip(pp["key"], raw["key"])) if a != b), min(map(len, (pp, raw))))
        raise DatasetError(f"{folder}: postprocessed.csv and raw.csv differ at data row {row + 1}")
    panos = {"true": True, "false": False}
    try:
        pano = np.array([panos[v.strip().lower()] for v in raw["pano"]], bool)
    except KeyError as exc:
        raise DatasetError(f"{folder / 'raw.csv'}: column 'pano' holds {exc.args[0]!r}, not True/False") from None
    return {
        "key": np.array(pp["key"]),
        "easting": _numbers(pp["easting"], folder / "postprocessed.csv", "easting"),
        "northing": _numbers(pp["northing"], folder / "postprocessed.csv", "northing"),
        "ca": _numbers(raw["ca"], folder / "raw.csv", "ca"),
        "pano": pano,
    }


class DbMsls(DbBase):
    """MSLS ``train`` or ``val`` (or ``cities``) as a ``dbBase``: the cities of the split found under
    ``root/train_val`` (a warning names the absent ones), panoramas left out, positives within 25 m."""

    gcl_recall_ns = (1, 5, 10, 20)  # GCL src/validate.py, mapillary_sls eval

    def __init__(self, root: str | os.PathLike, split: str = "val", cities: list[str] | None = None):
        base = Path(root) / "train_val"
        if cities is None:
            if split not in MSLS_CITIES:
                raise DatasetError(f"MSLS split {split!r}: expected train or val (the test cities have no positions)")
            cities = [c for c in MSLS_CITIES[split] if (base / c).is_dir()]
            absent = [c for c in MSLS_CITIES[split] if c not in cities]
            if not cities:
                raise DatasetError(f"{base}: none of the MSLS {split} cities ({', '.join(MSLS_CITIES[split])})")
            if absent and split == "val":  # an evaluation on part of MSLS-val is not MSLS-val
                warnings.warn(f"{base}: MSLS {split} without {', '.join(absent)}", stacklevel=2)
        self.cities = list(cities)
        parts: dict[str, list] = {k: [] for k in ("names", "utm", "heading", "row", "group")}
        per = {"db": {k: [] for k in parts}, "q": {k: [] for k in parts}}
        self._rows = {}  # city -> (query rows, database rows) in its csv files
        for ci, city in enumerate(self.cities):
            sizes = []
            for kind, sub in (("q", "query"), ("db", "database")):
                d = read_msls_folder(base / city / sub)
                keep = np.flatnonzero(~d["pano"])
                sizes.append(len(d["key"]))
                p = per[kind]
                p["names"] += [f"{city}/{sub}/images/{k}.jpg" for k in d["key"][keep]]
                p["utm"].append(np.stack([d["easting"][keep], d["northing"][keep] + CITY_SHIFT * ci]))
                p["heading"].append(np.deg2rad(d["ca"][keep]))
                p["row"].append(keep)
                p["group"].append(np.full(len(keep), ci))
            self._rows[city] = tuple(sizes)
        cat = {kind: {k: np.concatenate(v, axis=-1) for k, v in p.items() if k != "names"} for kind, p in per.items()}
        s = {
            "whichSet": split,
            "dbImageFns": per["db"]["names"],
            "qImageFns": per["q"]["names"],
            "utmDb": cat["db"]["utm"],
            "utmQ": cat["q"]["utm"],
            "posDistThr": POS_DIST_THR,
            "nonTrivPosDistSqThr": NON_TRIV_POS_DIST_SQ_THR,
        }
        name = f"msls_{split}" if len(self.cities) != 1 else f"msls_{self.cities[0]}"
        super().__init__(name, base, base, s, str(base))
        self.heading_db, self.heading_q = cat["db"]["heading"], cat["q"]["heading"]
        self.db_row, self.q_row = cat["db"]["row"], cat["q"]["row"]
        self.db_group, self.q_group = cat["db"]["group"], cat["q"]["group"]
        self._sim_cache: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}

    def gt_file(self, city: str) -> Path:
        return self.db_path / f"{city}_gt.h5"

    def _gt_row(self, iq: int, kind: str) -> np.ndarray | None:
        """The query's row of ``<city>_gt.h5`` over the city's database rows, or None without the file."""
        city = self.cities[self.q_group[iq]]
        path = self.gt_file(city)
        if not path.is_file():
            return None
        import h5py

        key = GT_KEYS[kind]
        try:
            with h5py.File(path, "r") as f:
                if key not in f:
                    raise DatasetError(f"{path}: no dataset {key!r} (it holds: {', '.join(f.keys()) or 'nothing'})")
                if tuple(f[key].shape) != self._rows[city]:
                    raise DatasetError(
                        f"{path}: {key} is {tuple(f[key].shape)} but {city} has {self._rows[city][0]} query and "
                        f"{self._rows[city][1]} database rows"
                    )
                return np.asarray(f[key][int(self.q_row[iq])], np.float32)
        except OSError as exc:
            raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from None

    def _similar(self, iq: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(db ids, similarity) of the database images with similarity > 0 to query ``iq``."""
        if (iq, kind) in self._sim_cache:
            return self._sim_cache[(iq, kind)]
        row = self._gt_row(iq, kind)
        if row is not None:
            ids = np.flatnonzero(self.db_group == self.q_group[iq])
            psi = row[self.db_row[ids]]
        elif kind == "binary":
            ids = self.pos_q(iq)
            psi = np.ones(len(ids), np.float32)
        else:
            from .fov import RADIUS, fov_overlaps

            ids = np.sort(np.asarray(self._tree.query_ball_point(self.utm_q[:, iq], 2 * RADIUS), np.int64))
            psi = fov_overlaps(self.utm_q[:, iq], self.heading_q[iq], self.utm_db[:, ids].T, self.heading_db[ids])
        keep = psi > 0
        self._sim_cache[(iq, kind)] = out = (ids[keep], psi[keep].astype(np.float32))
        return out

    def similarity(self, iq: int, ids, kind: str = "graded") -> np.ndarray:
        """GCL's labels: the query's row of ``<city>_gt.h5`` (``fov`` graded, ``sim`` binary) when the
        file is there; otherwise the field-of-view overlap from positions and compass angles (graded)
        or a position within posDistThr (binary)."""
        if kind not in GT_KEYS:
            raise ValueError(f"similarity kind must be graded or binary, got {kind!r}")
        near, psi = self._similar(iq, kind)
        ids = np.asarray(ids, np.int64)
        out = np.zeros(len(ids), np.float32)
        if len(near):
            pos = np.minimum(np.searchsorted(near, ids), len(near) - 1)
            hit = near[pos] == ids
            out[hit] = psi[pos[hit]]
        return out


def write_msls_city(root: Path, city: str, sub: str, keys, east_north, ca_deg, pano) -> None:
    """``root/train_val/<city>/<sub>/postprocessed.csv`` and ``raw.csv`` in MSLS's columns (images go
    to ``images/<key>.jpg`` beside them)."""
    from ..io_utils import atomic_file

    folder = root / "train_val" / city / sub
    folder.mkdir(parents=True, exist_ok=True)
    pp = [["", "key", "easting", "northing", "night", "view_direction"]]
    raw = [["", "key", "lon", "lat", "ca", "captured_at", "pano"]]
    for i, (k, (e, n), ca, p) in enumerate(zip(keys, east_north, ca_deg, pano)):
        pp.append([str(i), k, f"{e:.6f}", f"{n:.6f}", "False", "Forward"])
        raw.append([str(i), k, "0.0", "0.0", f"{ca:.4f}", str(1500000000000 + i), str(bool(p))])
    for name, rows in (("postprocessed.csv", pp), ("raw.csv", raw)):
        with atomic_file(folder / name, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(rows)


register_dataset("msls", lambda split, root, spec_dir: DbMsls(root, split), ("train", "val"))
