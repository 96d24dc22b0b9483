"""MSLS evaluated as mapillary_sls (``datasets/msls.py``, ``evaluate.py``) and GCL (``src/validate.py``)
evaluate it ([docs/gcl.md](../../../docs/gcl.md#msls-evaluation)): subtasks from ``subtask_index.csv``,
database panoramas ranked and counted as misses, the test cities (no public ground truth), and
sequences of ``seq_info.csv`` for the tasks im2seq, seq2im and seq2seq.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...datasets.db_base import DatasetError, DbBase
from ...datasets.registry import register_dataset
from .msls import POS_DIST_THR, TEST_CITIES, DbMsls
from .msls_seq import SequenceView, check_task, read_seq_info, read_subtask

# mapillary_sls datasets/msls.py:30 (the csv columns) and README (the long names)
SUBTASKS = {"all": "all", "summer2winter": "s2w", "winter2summer": "w2s", "old2new": "o2n", "new2old": "n2o",
            "day2night": "d2n", "night2day": "n2d"}  # fmt: skip
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


class DbMslsEval(DbMsls):
    """MSLS ``train`` or ``val`` (the dataset ``msls``): a :class:`DbMsls` that ``test`` can view as it
    evaluates (:meth:`evaluation_view`): the subtask's rows only (``subtask``, a column of
    ``subtask_index.csv``; None keeps every row), and with ``rank_db_panoramas`` the database panoramas kept
    in the search but never positives (GCL ``validate.py:38-46``: they are ranked and count as misses)."""

    def __init__(self, root, split: str, cities: list[str] | None = None, subtask: str | None = None,
                 rank_db_panoramas: bool = False):  # fmt: skip
        self.subtask, self.rank_db_panoramas = subtask, rank_db_panoramas
        super().__init__(root, split, cities)
        if subtask is not None and (self.num_queries == 0 or self.num_images == 0):
            raise DatasetError(f"{self.db_path}: no query or no database image of {', '.join(self.cities)} in the "
                               f"subtask {subtask}")  # fmt: skip

    def _kept_rows(self, folder: Path, kind: str, d: dict[str, np.ndarray]) -> np.ndarray:
        keep = np.ones(len(d["key"]), bool) if kind == "db" and self.rank_db_panoramas else ~d["pano"]
        if self.subtask is not None:
            keep &= read_subtask(folder, self.subtask, len(d["key"]))
        return np.flatnonzero(keep)

    def _name_suffix(self) -> str:
        return f"-{self.subtask}" if self.subtask else ""

    def evaluation_view(self, protocol: str = "matlab", **options):
        """The dataset as ``test`` evaluates it under ``protocol`` (:func:`evaluation_view`)."""
        return evaluation_view(self, protocol, **options)


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
    return DbMslsTest(root) if split == "test" else DbMslsEval(root, split)


def evaluation_view(db, protocol: str, subtask: str | None = None, db_panoramas: str | None = None,
                    task: str = "im2im", seq_length: int | None = None) -> DbBase:  # fmt: skip
    """``db`` (``DbMsls`` or ``DbMslsTest``) as ``test --protocol`` evaluates it: ``subtask`` (a name of
    :data:`SUBTASKS`; None: every image), ``db_panoramas`` ``rank`` (GCL and mapillary_sls: searched, never
    positive; the default of ``--protocol gcl``) or ``drop`` (removed; the default otherwise), and a
    sequence ``task`` with ``seq_length`` frames (``msls_seq.SequenceView``)."""
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
    as_opened = not (getattr(db, "subtask", None) or getattr(db, "rank_db_panoramas", False))
    if column is None and db_panoramas == "drop" and as_opened:
        return db  # panoramas dropped, every image: the dataset as opened
    return DbMslsEval(db.root, db.which_set, db.cities, column, db_panoramas == "rank")


register_dataset("msls", open_msls, ("train", "val", "test"))
