"""Mapillary Street-Level Sequences (MSLS) in its released layout, as ``mapillary_sls``
(``datasets/msls.py``) and GCL (``src/datasets.py``) read it ([docs/gcl.md](../../../docs/gcl.md#msls)).

``ROOT/train_val/<city>/{database,query}/`` each hold ``postprocessed.csv`` (``key``, ``easting``,
``northing``), ``raw.csv`` (``key``, compass angle ``ca`` in degrees, ``pano``) and ``images/<key>.jpg``;
GCL's graded ground truth, where the user has it, is ``ROOT/train_val/<city>_gt.h5`` with datasets
``fov`` (graded) and ``sim`` (binary), one row per query and one column per database image of the city,
in csv row order. Panoramas are left out of queries and database, as both originals do. Positions are
the csv's own; retrieval and ground truth stay inside the query's city: ``search_groups`` gives the
cities to the core's search, and positives, training positives and negatives come from the city's own
``DbBase`` (GCL's ``validate.py`` and mapillary_sls search and label each city on its own).

``make-synthetic --layout msls`` (the layout ``msls``, :func:`write_synthetic_msls`) writes the layout; the
dataset ``msls`` is registered in ``msls_eval``, which adds ``test``'s evaluation views.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from ...datasets.db_base import DatasetError, DbBase
from ...datasets.synthetic import MASKS, ORIGIN, register_layout, save_view
from .labels import RADIUS, fov_overlaps

# mapillary_sls datasets/msls.py default_cities; the test cities have no public positions.
MSLS_CITIES = {
    "train": ("trondheim", "london", "boston", "melbourne", "amsterdam", "helsinki", "tokyo", "toronto", "saopaulo",
              "moscow", "zurich", "paris", "bangkok", "budapest", "austin", "berlin", "ottawa", "phoenix", "goa",
              "amman", "nairobi", "manila"),
    "val": ("cph", "sf"),
}  # fmt: skip
POS_DIST_THR = 25.0  # GCL evaluates with posDistThr=25 (src/validate.py:22); MSLS's negDistThr
NON_TRIV_POS_DIST_SQ_THR = 100.0  # MSLS's training posDistThr, 10 m
RECALL_NS = (1, 5, 10, 20)  # GCL src/validate.py:18, mapillary_sls eval.py:18
GT_KEYS = {"graded": "fov", "binary": "sim"}
TEST_CITIES = (
    "miami",
    "athens",
    "buenosaires",
    "stockholm",
    "bengaluru",
    "kampala",
)  # mapillary_sls msls.py:21 (no positions)


def csv_rows(path: Path, what: str) -> tuple[list[str], list[list[str]]]:
    """An MSLS csv file's header and rows; ``what``: why the file is needed, for the error."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing ({what})")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DatasetError(f"{path}: empty")
    return rows[0], rows[1:]


def _read_csv(path: Path, columns: tuple[str, ...]) -> dict[str, list[str]]:
    header, body = csv_rows(path, "an MSLS city folder has query/ and database/ with this file")
    rows = [header, *body]
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
    ``root/train_val`` (a warning names the absent ones), panoramas left out, positives within 25 m of
    the query in its own city (``db_city`` / ``q_city``: the city index of each image). The per-query
    methods (``pos_q``, ``nontrivial_pos_q``, ``sample_negs_q``, ``similarity``) are the ground truth;
    ``get_pos_ids`` and ``sample_negs`` of a bare position know no city."""

    def __init__(self, root: str | os.PathLike, split: str = "val", cities: list[str] | None = None):
        base = Path(root) / "train_val"
        self.root = Path(root)
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
        parts: dict[str, list] = {k: [] for k in ("names", "utm", "heading", "row", "city", "pano")}
        per = {"db": {k: [] for k in parts}, "q": {k: [] for k in parts}}
        self._rows = {}  # city -> (query rows, database rows) in its csv files
        for ci, city in enumerate(self.cities):
            sizes = []
            for kind, sub in (("q", "query"), ("db", "database")):
                d = read_msls_folder(base / city / sub)
                keep = self._kept_rows(base / city / sub, kind, d)
                sizes.append(len(d["key"]))
                p = per[kind]
                p["names"] += [f"{city}/{sub}/images/{k}.jpg" for k in d["key"][keep]]
                p["utm"].append(np.stack([d["easting"][keep], d["northing"][keep]]))
                p["heading"].append(np.deg2rad(d["ca"][keep]))
                p["row"].append(keep)
                p["city"].append(np.full(len(keep), ci))
                p["pano"].append(d["pano"][keep])
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
        name += self._name_suffix()
        super().__init__(name, base, base, s, str(base))
        self.heading_db, self.heading_q = cat["db"]["heading"], cat["q"]["heading"]
        self.db_row, self.q_row = cat["db"]["row"], cat["q"]["row"]
        self.db_city, self.q_city = cat["db"]["city"], cat["q"]["city"]
        self.db_pano = cat["db"]["pano"]  # ranked panoramas (evaluation views) are never positives
        self._db_ids = [np.flatnonzero((self.db_city == ci) & ~self.db_pano) for ci in range(len(self.cities))]
        self._q_ids = [np.flatnonzero(self.q_city == ci) for ci in range(len(self.cities))]
        self._q_local = np.zeros(self.num_queries, np.int64)  # a query's index among its city's queries
        for ids in self._q_ids:
            self._q_local[ids] = np.arange(len(ids))
        self._city_dbs: dict[int, DbBase] = {}
        self._sim_cache: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}

    def _kept_rows(self, folder: Path, kind: str, d: dict[str, np.ndarray]) -> np.ndarray:
        """The csv rows of a city's ``query/`` (kind ``q``) or ``database/`` (``db``) folder the dataset holds:
        all but the panoramas (evaluation views keep others: ``msls_eval.DbMslsEval``)."""
        return np.flatnonzero(~d["pano"])

    def _name_suffix(self) -> str:
        return ""

    def search_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """The city of each database image and query: retrieval searches the query's city only."""
        return self.db_city, self.q_city

    def city_db(self, ci: int) -> DbBase:
        """City ``ci`` alone as a ``dbBase`` (built on first use); its ids index ``_db_ids[ci]``."""
        if ci not in self._city_dbs:
            db, q = self._db_ids[ci], self._q_ids[ci]
            s = {
                "whichSet": self.which_set,
                "dbImageFns": [self.db_image_fns[i] for i in db],
                "qImageFns": [self.q_image_fns[i] for i in q],
                "utmDb": self.utm_db[:, db],
                "utmQ": self.utm_q[:, q],
                "posDistThr": self.pos_dist_thr,
                "nonTrivPosDistSqThr": self.non_triv_pos_dist_sq_thr,
            }
            self._city_dbs[ci] = DbBase(f"{self.name}:{self.cities[ci]}", self.db_path, self.q_path, s, self.source)
        return self._city_dbs[ci]

    def _in_city(self, iq: int) -> tuple[DbBase, int, np.ndarray]:
        """(the query's city as a dbBase, the query's index there, the city's global database ids)."""
        ci = int(self.q_city[iq])
        return self.city_db(ci), int(self._q_local[iq]), self._db_ids[ci]

    def pos_q(self, iq: int) -> np.ndarray:
        """Ground-truth positives: the city's database images within posDistThr, ascending id."""
        city, local, ids = self._in_city(iq)
        return ids[city.pos_q(local)]

    def nontrivial_pos_q(self, iq: int) -> np.ndarray:
        city, local, ids = self._in_city(iq)
        return ids[city.nontrivial_pos_q(local)]

    def sample_negs_q(self, iq: int, n: int, rng) -> np.ndarray:
        """``sampleNegs`` over the query's city: its database images beyond posDistThr."""
        city, local, ids = self._in_city(iq)
        return ids[city.sample_negs_q(local, n, rng)]

    def gt_file(self, city: str) -> Path:
        return self.db_path / f"{city}_gt.h5"

    def _gt_row(self, iq: int, kind: str) -> np.ndarray | None:
        """The query's row of ``<city>_gt.h5`` over the city's database rows, or None without the file."""
        city = self.cities[self.q_city[iq]]
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
            ids = self._db_ids[self.q_city[iq]]
            psi = row[self.db_row[ids]]
        elif kind == "binary":
            ids = self.pos_q(iq)
            psi = np.ones(len(ids), np.float32)
        else:
            city, local, members = self._in_city(iq)
            ids = members[city.get_pos_ids(city.utm_q[:, local], (2 * RADIUS) ** 2)[0]]
            psi = fov_overlaps(self.utm_q[:, iq], self.heading_q[iq], self.utm_db[:, ids].T, self.heading_db[ids])
        keep = psi > 0
        self._sim_cache[(iq, kind)] = out = (ids[keep], psi[keep].astype(np.float32))
        return out

    def similarity(self, iq: int, ids, kind: str = "binary") -> np.ndarray:
        """GCL's labels: the query's row of ``<city>_gt.h5`` (``fov`` graded, ``sim`` binary) when the
        file is there; otherwise the field-of-view overlap from positions and compass angles (graded)
        or a position within posDistThr (binary); 0 for another city's images. Other kinds: the label
        providers (``DbBase.similarity``)."""
        if kind.lower() not in GT_KEYS:
            return super().similarity(iq, ids, kind)
        kind = kind.lower()
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
    from ...io_utils import atomic_file

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


PANO_EVERY = 10  # make-synthetic --layout msls: every tenth image is a panorama
# Metres of the MSLS layout per metre of the street: a synthetic camera sees 20 m of facade (FOV_M),
# so two views 20 m apart share nothing, while fields of view of r = 50 m (docs/gcl.md#graded-labels)
# still overlap at 34 m sideways; at 3x, views that share half their facade have psi about 0.5.
MSLS_SCALE = 3.0


def write_synthetic_msls(out: Path, split: str, split_index: int, db, queries, cfg, version: str) -> None:
    """The layout ``msls`` of ``make-synthetic``: MSLS's ``train_val/<city>/{database,query}/`` with csv
    files, each street a city (train: trondheim, london, ...; val: cph, sf), compass angles near north (the
    facades face the camera), every tenth image a panorama, which readers must leave out. The layout as
    registered adds the evaluation files and the test cities (:func:`write_synthetic_layout`)."""
    if split not in MSLS_CITIES:
        return
    from PIL import Image

    rng = np.random.default_rng(cfg.seed + 1 + split_index)
    for sub, views, sd in (("database", db, 2.0), ("query", queries, 8.0)):
        for st in sorted({v[0] for v in views}):
            city = MSLS_CITIES[split][st]
            mine = [v for v in views if v[0] == st]
            keys = [f"{split}{st}{sub[0]}{v[1]:05d}" for v in mine]
            for key, (_, _, _, image, lab) in zip(keys, mine):
                save_view(Image, image, out / "train_val" / city / sub / "images" / f"{key}.jpg", lab, out / MASKS)
            ca = rng.normal(0.0, sd, len(mine)) % 360  # degrees, clockwise from north
            pano = [v[1] % PANO_EVERY == PANO_EVERY - 1 for v in mine]
            utm = [(ORIGIN[0] + MSLS_SCALE * (v[2][0] - ORIGIN[0]), v[2][1]) for v in mine]
            write_msls_city(out, city, sub, keys, utm, ca, pano)


SEQ_FRAMES = 10  # make-synthetic --layout msls: each 10 consecutive csv rows are one sequence
# The synthetic rows' conditions (make-synthetic only): row i of query/ and database/ is at night, in winter,
# or old when these hold; a subtask X2Y keeps the database images in X and the queries in Y.
CONDITIONS = {
    "query": {"night": lambda i: i % 3 == 0, "winter": lambda i: i % 2 == 0, "old": lambda i: i % 5 < 2},
    "database": {"night": lambda i: i % 4 == 0, "winter": lambda i: i % 3 == 0, "old": lambda i: i % 2 == 0},
}
SUBTASK_CONDITIONS = {
    "s2w": ("winter", False),
    "w2s": ("winter", True),
    "d2n": ("night", False),
    "n2d": ("night", True),
    "o2n": ("old", True),
    "n2o": ("old", False),
}  # (condition, db has it)


def synthetic_subtask_rows(sub: str, n: int) -> dict[str, list[bool]]:
    """The columns of a synthetic ``subtask_index.csv`` (``all`` and one per subtask) for ``n`` rows of ``sub``."""
    cols = {"all": [True] * n}
    for column, (cond, db_has) in SUBTASK_CONDITIONS.items():
        want = db_has if sub == "database" else not db_has
        cols[column] = [bool(CONDITIONS[sub][cond](i)) == want for i in range(n)]
    return cols


def write_synthetic_layout(out: Path, split: str, split_index: int, db, queries, cfg, version: str) -> None:
    """The layout ``msls`` of ``make-synthetic``: :func:`msls.write_synthetic_msls`, then in each city folder
    ``seq_info.csv`` and ``subtask_index.csv`` (:func:`write_synthetic_seq_subtask`), and the test cities."""
    write_synthetic_msls(out, split, split_index, db, queries, cfg, version)
    if split not in MSLS_CITIES:
        write_synthetic_msls_test(out, split, db, queries)
        return
    for city in MSLS_CITIES[split][: len({v[0] for v in db})]:
        for sub in ("query", "database"):
            folder = out / "train_val" / city / sub
            write_synthetic_seq_subtask(folder, _read_csv(folder / "raw.csv", ("key",))["key"], sub)


def write_synthetic_seq_subtask(folder: Path, keys: list[str], sub: str) -> None:
    """``seq_info.csv`` (sequences of :data:`SEQ_FRAMES` consecutive rows) and ``subtask_index.csv`` of a
    synthetic ``query/`` or ``database/`` folder, in MSLS's columns."""
    from ...io_utils import atomic_file

    seq = [["", "key", "sequence_key", "frame_number"]]
    seq += [[str(i), k, f"{k[:-5]}s{i // SEQ_FRAMES}", str(i % SEQ_FRAMES)] for i, k in enumerate(keys)]
    cols = synthetic_subtask_rows(sub, len(keys))
    subtask = [[""] + list(cols)] + [[str(i)] + [str(c[i]) for c in cols.values()] for i in range(len(keys))]
    for name, rows in (("seq_info.csv", seq), ("subtask_index.csv", subtask)):
        with atomic_file(folder / name, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(rows)


def write_synthetic_msls_test(out: Path, split: str, db, queries) -> None:
    """The test split of ``make-synthetic --layout msls``: ``test/<city>/{query,database}/`` (miami, athens) with
    images, ``seq_info.csv`` and ``subtask_index.csv`` and no positions, as MSLS releases its test cities."""
    from PIL import Image

    if split != "test":
        return
    for sub, views in (("database", db), ("query", queries)):
        for st in sorted({v[0] for v in views}):
            folder = out / "test" / TEST_CITIES[st] / sub
            mine = [v for v in views if v[0] == st]
            keys = [f"{split}{st}{sub[0]}{v[1]:05d}" for v in mine]
            for key, (_, _, _, image, lab) in zip(keys, mine):
                save_view(Image, image, folder / "images" / f"{key}.jpg", lab, out / MASKS)
            write_synthetic_seq_subtask(folder, keys, sub)


register_layout("msls", write_synthetic_layout, "MSLS's train_val/<city>/ and test/<city>/ (datasets msls-*)")
