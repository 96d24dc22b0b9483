"""MSLS evaluated as mapillary_sls (``datasets/msls.py``, ``evaluate.py``) and GCL (``src/validate.py``)
evaluate it ([docs/gcl.md](../../../docs/gcl.md#msls-evaluation)): subtasks from ``subtask_index.csv``,
database panoramas ranked and counted as misses, the test cities (no public ground truth), and
sequences of ``seq_info.csv`` for the tasks im2seq, seq2im and seq2seq.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ...datasets.db_base import DatasetError, DbBase
from .msls import MSLS_CITIES, POS_DIST_THR, DbMsls

# mapillary_sls datasets/msls.py:30 (the csv columns) and README (the long names)
SUBTASKS = {"all": "all", "summer2winter": "s2w", "winter2summer": "w2s", "old2new": "o2n", "new2old": "n2o",
            "day2night": "d2n", "night2day": "n2d"}  # fmt: skip
TEST_CITIES = ("miami", "athens", "buenosaires", "stockholm", "bengaluru", "kampala")  # msls.py:21
TASKS = ("im2im", "im2seq", "seq2im", "seq2seq")  # msls.py:29
DB_PANORAMAS = ("rank", "drop")


def subtask_column(name: str) -> str:
    """The ``subtask_index.csv`` column of a subtask: its short name (``d2n``) or the README's (``day2night``)."""
    key = name.strip().lower()
    if key in SUBTASKS.values():
        return key
    if key in SUBTASKS:
        return SUBTASKS[key]
    names = ", ".join(f"{k} ({v})" if k != v else k for k, v in SUBTASKS.items())
    raise DatasetError(f"--subtask {name}: expected one of {names}")


def _rows(path: Path, what: str) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing ({what})")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DatasetError(f"{path}: empty")
    return rows[0], rows[1:]


def read_subtask(folder: Path, column: str, n_rows: int | None = None) -> np.ndarray:
    """The boolean column ``column`` of ``folder/subtask_index.csv``, one value per csv row of the folder
    (mapillary_sls ``msls.py:101-111``: the rows of a subtask, by position)."""
    path = folder / "subtask_index.csv"
    header, rows = _rows(path, f"--subtask {column} reads it; MSLS's metadata holds one per query/ and database/")
    if column not in header:
        raise DatasetError(f"{path}: no column {column!r} (header: {','.join(header)})")
    if n_rows is not None and len(rows) != n_rows:
        raise DatasetError(f"{path}: {len(rows)} rows, but the folder's csv files have {n_rows}")
    j, values = header.index(column), {"true": True, "false": False, "1": True, "0": False}
    try:
        return np.array([values[row[j].strip().lower()] for row in rows], bool)
    except (KeyError, IndexError):
        raise DatasetError(f"{path}: column {column!r} holds a value that is not True/False") from None


def read_seq_info(folder: Path) -> dict[str, np.ndarray]:
    """``key``, ``sequence_key`` and ``frame_number`` of ``folder/seq_info.csv``, in row order."""
    path = folder / "seq_info.csv"
    header, rows = _rows(path, "the sequence tasks and the test cities read it")
    cols = ("key", "sequence_key", "frame_number")
    missing = [c for c in cols if c not in header]
    if missing:
        raise DatasetError(f"{path}: no column {missing[0]!r} (header: {','.join(header)})")
    out = {c: np.array([row[header.index(c)] for row in rows]) for c in cols}
    try:
        out["frame_number"] = out["frame_number"].astype(np.int64)
    except ValueError:
        raise DatasetError(f"{path}: column 'frame_number' holds a non-integer") from None
    return out


class DbMslsEval(DbMsls):
    """MSLS ``val`` (or ``train``) as ``test`` evaluates it: the subtask's rows only (``subtask``, a column
    of ``subtask_index.csv``; None keeps every row), and with ``rank_db_panoramas`` the database panoramas
    kept in the search but never positives (GCL ``validate.py:38-46``: they are ranked and count as misses)."""

    def __init__(self, root, split: str, cities: list[str] | None = None, subtask: str | None = None,
                 rank_db_panoramas: bool = False):  # fmt: skip
        self.subtask, self.rank_db_panoramas = subtask, rank_db_panoramas
        super().__init__(root, split, cities)
        if self.num_queries == 0 or self.num_images == 0:
            raise DatasetError(f"{self.db_path}: no query or no database image of {', '.join(self.cities)} in the "
                               f"subtask {subtask}")  # fmt: skip

    def _kept_rows(self, folder: Path, kind: str, d: dict[str, np.ndarray]) -> np.ndarray:
        keep = np.ones(len(d["key"]), bool) if kind == "db" and self.rank_db_panoramas else ~d["pano"]
        if self.subtask is not None:
            keep &= read_subtask(folder, self.subtask, len(d["key"]))
        return np.flatnonzero(keep)

    def _name_suffix(self) -> str:
        return f"-{self.subtask}" if self.subtask else ""


class DbMslsTest(DbBase):
    """MSLS ``test``: the test cities found under ``root/test`` (``msls.py:183-205``), images listed by
    ``seq_info.csv`` (keys) and, with ``subtask``, filtered by ``subtask_index.csv``. There are no public
    positions: no query has a positive (``has_ground_truth`` False); the predictions go to the server."""

    has_ground_truth = False
    is_msls = True  # the gcl protocol's K: MSLS's (1, 5, 10, 20)

    def __init__(self, root, subtask: str | None = None):
        base = Path(root) / "test"
        self.root, self.subtask = Path(root), subtask
        self.cities = [c for c in TEST_CITIES if (base / c).is_dir()]
        if not self.cities:
            raise DatasetError(f"{base}: none of the MSLS test cities ({', '.join(TEST_CITIES)})")
        names: dict[str, list[str]] = {"query": [], "database": []}
        city: dict[str, list[int]] = {"query": [], "database": []}
        for ci, c in enumerate(self.cities):
            for sub in names:
                keys = read_seq_info(base / c / sub)["key"]
                if subtask is not None:
                    keys = keys[read_subtask(base / c / sub, subtask, len(keys))]
                names[sub] += [f"{c}/{sub}/images/{k}.jpg" for k in keys]
                city[sub] += [ci] * len(keys)
        s = {"whichSet": "test", "dbImageFns": names["database"], "qImageFns": names["query"],
             "utmDb": np.zeros((2, len(names["database"]))), "utmQ": np.zeros((2, len(names["query"]))),
             "posDistThr": POS_DIST_THR, "nonTrivPosDistSqThr": 100.0}  # fmt: skip
        super().__init__("msls_test" + (f"-{subtask}" if subtask else ""), base, base, s, str(base))
        self.db_city, self.q_city = np.array(city["database"], int), np.array(city["query"], int)

    def search_groups(self) -> tuple[np.ndarray, np.ndarray]:
        return self.db_city, self.q_city

    def pos_q(self, iq: int) -> np.ndarray:
        return np.zeros(0, np.int64)

    nontrivial_pos_q = pos_q

    def similarity(self, iq: int, ids, kind: str = "binary") -> np.ndarray:
        return np.zeros(len(np.asarray(ids).ravel()), np.float32)

    def evaluation_view(self, protocol: str = "matlab", **options):
        return evaluation_view(self, protocol, **options)


def open_msls(split: str, root: str | os.PathLike, spec_dir=None) -> DbBase:
    """The dataset family ``msls``: ``train`` and ``val`` (:class:`DbMsls`), ``test`` (:class:`DbMslsTest`)."""
    return DbMslsTest(root) if split == "test" else DbMsls(root, split)


def evaluation_view(db, protocol: str, subtask: str | None = None, db_panoramas: str | None = None,
                    task: str = "im2im", seq_length: int | None = None) -> DbBase:  # fmt: skip
    """``db`` (``DbMsls`` or ``DbMslsTest``) as ``test --protocol`` evaluates it: ``subtask`` (a name of
    :data:`SUBTASKS`; None: every image), ``db_panoramas`` ``rank`` (GCL and mapillary_sls: searched, never
    positive; the default of ``--protocol gcl``) or ``drop`` (removed; the default otherwise), and a
    sequence ``task`` with ``seq_length`` frames (``msls_seq.SequenceView``)."""
    from .msls_seq import SequenceView, check_task

    column = subtask_column(subtask) if subtask is not None else None
    seq_length = check_task(task, seq_length)
    if db_panoramas is None:
        db_panoramas = "rank" if protocol.lower() == "gcl" else "drop"
    if db_panoramas not in DB_PANORAMAS:
        raise DatasetError(f"--db-panoramas {db_panoramas}: expected {' or '.join(DB_PANORAMAS)}")
    if task != "im2im":
        return SequenceView(db, task, seq_length, column, db_panoramas == "rank")
    if isinstance(db, DbMslsTest):
        return DbMslsTest(db.root, column) if column else db
    return DbMslsEval(db.root, db.which_set, db.cities, column, db_panoramas == "rank")


def prediction_keys(names: list[str]) -> list[str]:
    """MSLS keys of image names (``.../images/<key>.jpg``), as GCL's ``extract_msls_top_k`` writes them."""
    return [Path(n).stem for n in names]


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

    from ...datasets.synthetic import MASKS, save_view

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


__all__ = ["DbMslsEval", "DbMslsTest", "MSLS_CITIES", "evaluation_view", "open_msls", "read_subtask"]
