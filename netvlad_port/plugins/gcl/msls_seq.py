"""MSLS's sequence tasks (mapillary_sls ``datasets/msls.py:67-75, 97-180, 263-292``): ``im2seq``, ``seq2im``
and ``seq2seq`` with sequences of ``seq_length`` frames ([docs/gcl.md](../../../docs/gcl.md#msls-evaluation)).

A sequence is centred on a csv row and takes the rows around it (``arange_as_seq``): all of one
``sequence_key`` of ``seq_info.csv`` with consecutive ``frame_number``; the subtask and the panorama flag
are those of its centre frame (``filter``). A query's positives are the database sequences holding a frame
within 25 m of any of its frames (``msls.py:143-163``). mapillary_sls scores rankings and leaves the
sequence descriptor to the method; ours is the concatenation of the frames' descriptors, an image repeated
as often as the other side's frames, so the squared distance is the sum over aligned frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...datasets.db_base import DatasetError, DbBase
from .msls import POS_DIST_THR, csv_rows, read_msls_folder

TASKS = ("im2im", "im2seq", "seq2im", "seq2seq")


def read_subtask(folder: Path, column: str, n_rows: int | None = None) -> np.ndarray:
    """The boolean column ``column`` of ``folder/subtask_index.csv``, one value per csv row of the folder
    (mapillary_sls ``msls.py:101-111``: the rows of a subtask, by position)."""
    path = folder / "subtask_index.csv"
    header, rows = csv_rows(path, f"--subtask {column} reads it; MSLS's metadata holds one per query/ and database/")
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
    header, rows = csv_rows(path, "the sequence tasks and the test cities read it")
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


def check_task(task: str, seq_length: int | None) -> int:
    """The sequence length of ``task``: 1 for im2im, else an odd ``seq_length`` above 1 (``msls.py:31-32``)."""
    if task not in TASKS:
        raise DatasetError(f"--task {task}: expected one of {', '.join(TASKS)}")
    if task == "im2im":
        if seq_length not in (None, 1):
            raise DatasetError(f"--seq-length {seq_length}: im2im compares single images (length 1)")
        return 1
    if seq_length is None:
        raise DatasetError(f"--task {task} needs --seq-length (odd, 3 or more)")
    if seq_length < 3 or seq_length % 2 == 0:
        raise DatasetError(f"--seq-length {seq_length}: {task} needs an odd sequence length of 3 or more")
    return int(seq_length)


def arrange_as_seq(seq_key: np.ndarray, frame: np.ndarray, length: int) -> np.ndarray:
    """``arange_as_seq``: S x length csv rows, one sequence per row that can centre one (same sequence key,
    consecutive frame numbers), in csv order."""
    half, n, out = length // 2, len(seq_key), []
    for idx in range(half, n - half):
        rows = np.arange(idx - half, idx + half + 1)
        if len(set(seq_key[rows])) == 1 and (np.diff(frame[rows]) == 1).all():
            out.append(rows)
    return np.array(out, np.int64).reshape(-1, length)


def city_sequences(folder: Path, length: int, test: bool, subtask: str | None, drop_panoramas: bool):
    """(keys, 2 x n positions, panorama flags) of a ``query/`` or ``database/`` folder's csv rows, and its
    sequences (rows, S x length) kept by the centre frame's subtask and panorama flag (``msls.py:97-119``)."""
    info = read_seq_info(folder)
    n = len(info["key"])
    if test:
        pos, pano = np.zeros((2, n)), np.zeros(n, bool)
    else:
        d = read_msls_folder(folder)
        if list(d["key"]) != list(info["key"]):
            raise DatasetError(f"{folder}: seq_info.csv and postprocessed.csv list other keys")
        pos, pano = np.stack([d["easting"], d["northing"]]), d["pano"]
    rows = arrange_as_seq(info["sequence_key"], info["frame_number"], length)
    centre = rows[:, length // 2]
    keep = np.ones(len(rows), bool)
    if subtask is not None:
        keep &= read_subtask(folder, subtask, n)[centre]
    if drop_panoramas:
        keep &= ~pano[centre]
    return info["key"], pos, pano, rows[keep]


class SequenceView:
    """MSLS (``val``/``train`` or ``test``) evaluated on a sequence task: its items are sequences (query:
    ``q_seq[i]``, database: ``db_seq[j]``, rows of ``frames``' image lists), ranked with the descriptors of
    :meth:`combine`. ``frames`` is the ``dbBase`` whose images are extracted (every frame of a sequence);
    ``db_image_fns`` / ``q_image_fns`` name each sequence's centre frame (figures, ``predictions.csv``)."""

    is_msls = True

    def __init__(self, base, task: str, seq_length: int, subtask: str | None = None, rank_db_panoramas: bool = False):
        self.task, self.seq_length, self.subtask = task, seq_length, subtask
        test = not getattr(base, "has_ground_truth", True)  # the test cities: no positions, no raw.csv
        self.has_ground_truth = not test
        top = base.root / ("test" if test else "train_val")
        lengths = {"query": seq_length if task.startswith("seq") else 1,
                   "database": seq_length if task.endswith("seq") else 1}  # fmt: skip
        names = {"query": [], "database": []}
        utm = {"query": [], "database": []}
        seqs = {"query": [], "database": []}
        city = {"query": [], "database": []}
        ranked_pano = []
        for ci, c in enumerate(base.cities):
            for sub in ("query", "database"):
                keys, pos, pano, rows = city_sequences(top / c / sub, lengths[sub], test, subtask,
                                                       sub == "query" or not rank_db_panoramas)  # fmt: skip
                used = np.unique(rows)  # the frames to extract, as indices into this folder's list
                offset = len(names[sub])
                names[sub] += [f"{c}/{sub}/images/{k}.jpg" for k in keys[used]]
                utm[sub].append(pos[:, used])
                seqs[sub] += (np.searchsorted(used, rows) + offset).tolist()
                city[sub] += [ci] * len(rows)
                if sub == "database":
                    ranked_pano += pano[rows[:, lengths[sub] // 2]].tolist()
        if not seqs["query"] or not seqs["database"]:
            raise DatasetError(f"{top}: no {task} sequence of {seq_length} frames in {', '.join(base.cities)}")
        self.q_seq, self.db_seq = (np.array(seqs[s], np.int64) for s in ("query", "database"))
        self.q_city, self.db_city = (np.array(city[s], np.int64) for s in ("query", "database"))
        self.db_pano = np.array(ranked_pano, bool)
        s = {"whichSet": base.which_set, "dbImageFns": names["database"], "qImageFns": names["query"],
             "utmDb": np.concatenate(utm["database"], 1), "utmQ": np.concatenate(utm["query"], 1),
             "posDistThr": POS_DIST_THR, "nonTrivPosDistSqThr": 100.0}  # fmt: skip
        suffix = (f"-{subtask}" if subtask else "") + f"-{task}{seq_length}"
        self.frames = DbBase(f"{base.name.split('-')[0]}{suffix}:frames", top, top, s, str(top))
        self.name = f"{base.name.split('-')[0]}{suffix}"
        self.db_path, self.q_path, self.source = top, top, str(top)
        self.which_set, self.pos_dist_thr = base.which_set, POS_DIST_THR
        self.db_image_fns = [names["database"][r[len(r) // 2]] for r in self.db_seq]
        self.q_image_fns = [names["query"][r[len(r) // 2]] for r in self.q_seq]
        self._positives: dict[int, np.ndarray] = {}

    @property
    def num_images(self) -> int:
        return len(self.db_seq)

    @property
    def num_queries(self) -> int:
        return len(self.q_seq)

    def db_image(self, i: int) -> Path:
        return self.db_path / self.db_image_fns[i]

    def q_image(self, i: int) -> Path:
        return self.q_path / self.q_image_fns[i]

    def check_images(self) -> None:
        self.frames.check_images()

    def search_groups(self) -> tuple[np.ndarray, np.ndarray]:
        return self.db_city, self.q_city

    def retrieve_factor(self) -> int:
        return 1

    def nn_search_postprocess(self, iq: int, ids: np.ndarray, ds: np.ndarray, n_top: int):
        return ids[:n_top], ds[:n_top]

    def pos_q(self, iq: int) -> np.ndarray:
        """The database sequences (of the query's city, centre not a panorama) holding a frame within 25 m of
        a frame of query sequence ``iq`` (``msls.py:146-161``); none on the test split."""
        if iq not in self._positives:
            if not self.has_ground_truth:
                return np.zeros(0, np.int64)
            d2 = ((self.frames.utm_db[:, :, None] - self.frames.utm_q[:, None, self.q_seq[iq]]) ** 2).sum(0)
            near = np.flatnonzero((d2 <= self.pos_dist_thr**2).any(1))
            mine = (self.db_city == self.q_city[iq]) & ~self.db_pano
            self._positives[iq] = np.flatnonzero(mine & np.isin(self.db_seq, near).any(1))
        return self._positives[iq]

    def combine(self, db_feats, q_feats) -> tuple[np.ndarray, np.ndarray]:
        """Sequence descriptors from the frames' (rows of ``frames``' database and query lists): the frames'
        concatenated, an image repeated to the other side's length."""
        from ...search_index import as_descriptors

        db = as_descriptors(db_feats).rows(np.arange(len(self.frames.db_image_fns)))
        q = np.asarray(q_feats, np.float32)
        reps = self.seq_length // self.q_seq.shape[1], self.seq_length // self.db_seq.shape[1]
        return (np.repeat(db[self.db_seq], reps[1], axis=1).reshape(len(self.db_seq), -1),
                np.repeat(q[self.q_seq], reps[0], axis=1).reshape(len(self.q_seq), -1))  # fmt: skip

    def prediction_keys(self) -> tuple[list[str], list[str]]:
        """Keys as mapillary_sls writes a sequence: its frames' keys joined by commas."""
        keys = {s: [Path(n).stem for n in names] for s, names in (("db", self.frames.db_image_fns),
                                                                   ("q", self.frames.q_image_fns))}  # fmt: skip
        return ([",".join(keys["db"][i] for i in r) for r in self.db_seq],
                [",".join(keys["q"][i] for i in r) for r in self.q_seq])  # fmt: skip
