"""Search over millions of descriptors in bounded memory, with faiss
([README: search at scale](../README.md#search-at-scale)).

* Exact: :class:`ExactSearch` streams the database (an h5 read chunk by chunk, or an array) through
  faiss's exhaustive ``knn`` and keeps a running top-k per query, merged by (distance, database index):
  the same ids and distances as one ``IndexFlatL2`` over the whole set, ties included (faiss keeps the
  lower index of equal distances). ``--max-memory`` is the whole process's budget: what it holds when the
  search starts (``VmRSS``: imports, names, queries) is measured and the chunks fill the rest
  (``--chunk-size`` instead sets them). Chunks start at multiples of faiss's database block (1024 rows),
  so even its BLAS path sees the blocks it would see on the whole set.
* Approximate: :func:`build_index` makes a faiss index from an index-factory string (``IVF4096,PQ64``,
  ``HNSW32`` ...), trained on a sample and filled chunk by chunk; :func:`save_index` writes it with
  ``faiss.write_index`` plus a JSON sidecar (the features' tag, the names in index order), and
  :func:`open_index` reads it back, refusing one made from other descriptors. Raw VLAD (K-fastest, no
  whitening; [docs/matlab.md#vlad-layout](../docs/matlab.md#vlad-layout)) is reordered cluster-major
  before PQ by a ``RemapDimensionsTransform`` inside the index, so queries need no change.

No index structure of our own, nothing pickled."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import numpy as np

from .errors import NetVladPortError
from .memory_budget import WORKSPACE, memory_budget, peak_since_reset, process_rss, release_freed, reset_peak

FAISS_BLOCK = 1024  # faiss's distance_compute_blas_database_bs: its own blocks of database rows
TRAIN_COPIES = 3  # an index's training sample, and faiss's copies while training (k-means, residuals: ~1.5x)
MERGE_BYTES = 100  # per (query, k): the running and new results, merge_top's concatenations, order, picks


def row_bytes(row_floats: int) -> int:
    """What one database row read into a chunk holds: its float32 values and its int64 id."""
    return row_floats * 4 + 8


INDEX_FORMAT = "netvlad-port/faiss-index"


def faiss_message(exc: Exception) -> str:
    """The sentence of a faiss RuntimeError, without its C++ function and source position."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return re.split(r"\.(?:cpp|h|cu):\d+: ", text)[-1]


def looks_like_file(value: str) -> bool:
    """An ``--index`` value meant as a file: it exists, or has a folder or a file suffix (a factory string
    has neither)."""
    return Path(value).exists() or "/" in value or Path(value).suffix.lower() in (".faiss", ".index", ".bin")


# ---------------------------------------------------------------------------------------------------
# database rows, read a chunk at a time


class Descriptors:
    """The database's descriptors as rows ``0..len-1``, read on demand (``rows(ids)``), each cropped to
    ``dim`` as ``testFromFn``'s ``cropToDim`` (first ``dim`` components, L2 again) when ``dim`` is set."""

    crop: int | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def full_dim(self) -> int:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        return min(self.crop, self.full_dim) if self.crop else self.full_dim

    @property
    def row_floats(self) -> int:
        """Floats held per row while one is read: the row, and its crop beside it."""
        return self.full_dim + (self.dim if self.dim < self.full_dim else 0)

    def _read(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rows(self, ids) -> np.ndarray:
        x = self._read(np.asarray(ids, np.int64))
        if self.crop and self.crop < x.shape[1]:
            import torch

            from .extract import crop_to_dim

            x = crop_to_dim(torch.from_numpy(x), self.crop).numpy()
        return np.ascontiguousarray(x, np.float32)

    def cropped(self, dim: int | None) -> Descriptors:
        import copy

        out = copy.copy(self)
        out.crop = dim or None
        return out


class ArrayDescriptors(Descriptors):
    """Rows of an N x D array in memory."""

    def __init__(self, array: np.ndarray):
        self.array = np.asarray(array, np.float32)

    def __len__(self) -> int:
        return len(self.array)

    @property
    def full_dim(self) -> int:
        return self.array.shape[1]

    def _read(self, ids):
        return self.array[ids]


class H5Descriptors(Descriptors):
    """``global_descriptor`` rows of an hloc-layout h5 for ``names``, in that order (float16 files are read
    as float32); only the rows asked for are ever in memory."""

    def __init__(self, path, names: list[str]):
        import h5py

        self.path, self.names = Path(path), list(names)
        with h5py.File(self.path, "r") as f:
            missing = next((n for n in self.names if n not in f), None) if len(self.names) < 100_000 else None
            if missing is not None:
                raise KeyError(f"{path}: images without a descriptor (first: {missing})")
            self._dim = int(f[self.names[0]]["global_descriptor"].shape[0]) if self.names else 0

    def __len__(self) -> int:
        return len(self.names)

    @property
    def full_dim(self) -> int:
        return self._dim

    def _read(self, ids):
        import h5py

        out = np.empty((len(ids), self._dim), np.float32)
        with h5py.File(self.path, "r") as f:
            fid = f.id
            for row, i in enumerate(ids):  # h5py's low level: a third of the high level's time per image
                try:
                    dset = h5py.h5d.open(fid, f"{self.names[i]}/global_descriptor".encode())
                except KeyError:
                    raise KeyError(f"{self.path}: {self.names[i]} has no descriptor") from None
                dset.read(h5py.h5s.ALL, h5py.h5s.ALL, out[row])
        return out


def as_descriptors(feats) -> Descriptors:
    return feats if isinstance(feats, Descriptors) else ArrayDescriptors(feats)


def chunk_rows(row_floats: int, n_queries: int, k: int, max_memory=None, chunk_size: int | None = None,
               in_use: int | None = None) -> int:  # fmt: skip
    """Database rows per chunk (``row_floats`` floats each): ``chunk_size`` as given, else what fits in
    ``max_memory`` -- the whole process's budget -- beside what it holds already (``in_use``, by default
    :func:`process_rss` now: imports, names, queries), the running results and faiss's and HDF5's buffers;
    a multiple of faiss's 1024-row block where one fits. Without ``max_memory``: 2GB beyond ``in_use``."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise NetVladPortError(f"--chunk-size {chunk_size}: must be at least 1")
        return int(chunk_size)
    in_use = process_rss() if in_use is None else in_use
    budget, text = memory_budget(max_memory, in_use)
    fixed = in_use + MERGE_BYTES * n_queries * k + WORKSPACE  # + merging results, faiss's and HDF5's buffers
    rows = (budget - fixed) // row_bytes(row_floats)
    if rows < 1:
        need = (fixed + FAISS_BLOCK * row_bytes(row_floats)) / 1e9
        raise NetVladPortError(f"--max-memory {text}: too small, this process already holds {in_use / 1e9:.2f} GB "
                               f"(the whole process counts); give at least {need:.2f}GB")  # fmt: skip
    return int(rows // FAISS_BLOCK * FAISS_BLOCK if rows >= FAISS_BLOCK else rows)


def merge_top(ds, ids, new_ds, new_ids, k):
    """The first k of two result lists per query, by (distance, database index); id -1 (nothing) last."""
    d = np.concatenate([ds, new_ds], 1)
    i = np.concatenate([ids, new_ids], 1)
    d = np.where(i < 0, np.inf, d)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def _gpu_count(use_gpu) -> int:
    import faiss

    if use_gpu is False or not hasattr(faiss, "StandardGpuResources"):
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


class ExactSearch:
    """Exhaustive squared-L2 search of ``db`` (:class:`Descriptors` or an array), one chunk at a time, as
    pytorch-NetVlad's ``test`` searches one ``IndexFlatL2`` (main.py:202-208)."""

    exact = True

    def __init__(self, db, max_memory=None, chunk_size: int | None = None, use_gpu: bool | None = None):
        self.db, self.max_memory, self.chunk_size, self.use_gpu = as_descriptors(db), max_memory, chunk_size, use_gpu
        self.gpu = _gpu_count(use_gpu) > 0
        self._res = None

    @property
    def where(self) -> str:
        where = "faiss GPU (exact, knn_gpu)" if self.gpu else "faiss CPU (exact, IndexFlatL2 order)"
        if self.use_gpu and not self.gpu:
            where += " - faiss-gpu or a GPU is missing"
        return where

    def _knn(self, q, x, k):
        import faiss

        if self.gpu:
            self._res = self._res or faiss.StandardGpuResources()
            return faiss.knn_gpu(self._res, q, x, k)
        return faiss.knn(q, x, k)

    def search(self, q: np.ndarray, k: int, members: np.ndarray | None = None):
        """(ids, squared distances), each Q x min(k, n), ascending, ties by index; ids are database rows
        (among ``members`` when given)."""
        q = np.ascontiguousarray(q, np.float32)
        n = len(self.db) if members is None else len(members)
        k = min(k, n)
        step = chunk_rows(self.db.row_floats, len(q), k, self.max_memory, self.chunk_size)
        ds, ids = np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        for start in range(0, n, step):
            pos = np.arange(start, min(n, start + step))
            rows = pos if members is None else members[pos]
            x = self.db.rows(rows)
            c_ds, c_ids = self._knn(q, x, min(k, len(x)))
            c_ids = np.where(c_ids >= 0, rows[np.maximum(c_ids, 0)], -1)
            del x
            ds, ids = merge_top(ds, ids, c_ds, c_ids, k)
        return ids, ds


# ---------------------------------------------------------------------------------------------------
# approximate indexes


def cluster_major_permutation(k: int, d: int) -> np.ndarray:
    """Column order taking a K-fastest VLAD (element k + K*d) to cluster-major (element d + D*k)."""
    return np.arange(k * d).reshape(d, k).T.ravel()


def vlad_layout(model) -> tuple[int, int] | None:
    """(K, D) when ``model``'s descriptor is raw MATLAB VLAD (K-fastest, nothing with weights after the
    VLAD layer: no WPCA); else None (whitened, another pooling, or cluster-major already)."""
    from .layers.netvlad import VLADCore

    layers = list(getattr(model, "layers", []))
    at = [i for i, layer in enumerate(layers) if isinstance(layer, VLADCore)]
    if not at or any(list(layer.parameters()) for layer in layers[at[-1] + 1 :]):
        return None
    return layers[at[-1]].K, layers[at[-1]].D


def _uses_pq(factory: str) -> bool:
    return "PQ" in factory.upper()  # PQ, OPQ, IVF...,PQ, HNSW..._PQ: product quantization somewhere


def is_exact_factory(factory: str) -> bool:
    return factory.replace(" ", "").lower() in ("flat", "flatl2", "idmap,flat")


def default_train_size(index, n: int) -> int:
    """How many database rows train an index: 64 per IVF list (at least 50,000) or 50,000, all if fewer."""
    import faiss

    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except (RuntimeError, AttributeError):
        nlist = 0
    return min(n, max(50_000, 64 * nlist))


def build_index(db, factory: str, vlad: tuple[int, int] | None = None, cluster_major: bool | None = None,
                train_size: int | None = None, max_memory=None, chunk_size: int | None = None, seed: int = 0,
                log=None):  # fmt: skip
    """A faiss index of ``db``'s rows (ids = row numbers) from an index-factory string: trained on a random
    sample (``train_size`` rows, default :func:`default_train_size`), then filled chunk by chunk. Raw VLAD
    (``vlad`` = (K, D)) is reordered cluster-major first when the index quantizes with PQ
    (``cluster_major`` None), always (True) or never (False). Returns (index, info dict)."""
    import faiss

    db = as_descriptors(db)
    d = db.dim
    try:
        index = faiss.index_factory(d, factory)
    except RuntimeError as exc:
        raise NetVladPortError(f"index factory {factory!r}: faiss cannot build it ({faiss_message(exc)})") from None
    reorder = bool(vlad) and (cluster_major if cluster_major is not None else _uses_pq(factory))
    if reorder:
        if vlad[0] * vlad[1] != d:
            raise NetVladPortError(f"cluster-major reorder: K={vlad[0]} x D={vlad[1]} is not the {d}-D descriptor")
        perm = cluster_major_permutation(*vlad).astype(np.int32)
        remap, inner = faiss.RemapDimensionsTransform(d, d, faiss.swig_ptr(perm)), index
        index = faiss.IndexPreTransform(remap, inner)  # faiss's wrapper keeps both Python objects alive
    _no_polysemous_training(index)
    in_use = process_rss()
    budget, text = memory_budget(max_memory, in_use)
    if chunk_size is None:
        chunk_rows(db.row_floats, 0, 0, max_memory, None, in_use)  # a budget without room for a row: refused there
    n_train = 0
    if not index.is_trained:
        fits = chunk_size or max(1, (budget - in_use - WORKSPACE) // (TRAIN_COPIES * row_bytes(db.row_floats)))
        n_train = min(len(db), train_size or default_train_size(index, len(db)), fits)
        sample = np.sort(np.random.default_rng(seed).choice(len(db), n_train, replace=False))
        if log:
            log(f"training {factory} on {n_train} of {len(db)} descriptors")
        try:
            index.train(db.rows(sample))
        except RuntimeError as exc:
            why = f" (all that --max-memory {text} leaves room for)" if n_train == fits else ""
            raise NetVladPortError(f"index {factory}: faiss cannot train it on {n_train} rows{why}: "
                                   f"{faiss_message(exc)}") from None  # fmt: skip
        del sample
    fill = IndexFill(index, db, budget, text, factory, chunk_size)
    while fill.done < len(db):
        fill.add_chunk()
        if log:
            log(f"added {fill.done} / {len(db)}")
    info = {"factory": factory, "cluster_major": reorder, "vlad": list(vlad) if vlad else None,
            "train_size": n_train, "count": len(db), "dim": d}  # fmt: skip
    return index, info


class IndexFill:
    """Adds ``db``'s rows to ``index`` in chunks that keep the whole process within ``budget``. The first
    chunk (one faiss block) measures what a row costs while it is added (``VmHWM`` over it: the rows read and
    faiss's buffers, e.g. IVF-PQ's distance tables of M x 256 floats a row) and what it leaves in the index
    (its serialized size before and after; freed memory is handed back first, ``release_freed``, so that
    what training freed is not reused unseen); an index that will not fit is refused then, in one line.
    faiss's arrays grow by doubling (old and new side by side while copied): a flat storage (HNSW's, Flat's)
    is sized once to its final length (:func:`_reserve_codes`), and the rest of the index is allowed twice.
    Each later chunk takes what the budget has left beside the process as it is (``VmRSS``). ``chunk_size``,
    or a system without ``/proc/self/clear_refs``, gives fixed chunks (the index grows beside them)."""

    def __init__(self, index, db: Descriptors, budget: int, text: str, factory: str, chunk_size: int | None):
        self.index, self.db, self.budget, self.text, self.factory = index, db, budget, text, factory
        self.fixed = chunk_size or (None if reset_peak() else chunk_rows(db.row_floats, 0, 0, str(budget)))
        self.done, self.cost, self.grows, self.other = 0, None, 0.0, 0.0

    def add_chunk(self) -> None:
        if self.fixed or self.cost is not None:
            step = self.fixed or self._fitting_rows()
            self.index.add(self.db.rows(np.arange(self.done, min(len(self.db), self.done + step))))
            self.done = min(len(self.db), self.done + step)
            return
        import faiss

        rows = np.arange(0, min(len(self.db), FAISS_BLOCK))
        size = len(faiss.serialize_index(self.index))
        release_freed()  # else the first chunk reuses what training freed, and its peak shows nothing
        before = process_rss()
        reset_peak()
        self.index.add(self.db.rows(rows))
        # at least the rows read and faiss's copy of them
        self.cost = max(2.0 * row_bytes(self.db.row_floats), (peak_since_reset() - before) / len(rows))
        self.grows = max(0.0, (len(faiss.serialize_index(self.index)) - size) / len(rows))
        self.done = len(rows)
        flat = _flat_storage(self.index)
        self.other = max(0.0, self.grows - (flat.code_size if flat is not None else 0))
        if self._final_peak() > self.budget:
            self._refuse()
        if flat is not None:
            _reserve_codes(flat, len(self.db))

    def _final_peak(self) -> float:
        left = len(self.db) - self.done
        return process_rss() + self.grows * left + self.other * len(self.db) + self.cost + WORKSPACE

    def _fitting_rows(self) -> int:
        release_freed()
        room = self.budget - process_rss() - WORKSPACE - self.other * self.done  # a doubling of the rest
        step = int(room // (self.cost + 2 * self.other))
        if step < 1:
            self._refuse()
        return step // FAISS_BLOCK * FAISS_BLOCK if step >= FAISS_BLOCK else step

    def _refuse(self) -> None:
        n, held = len(self.db), process_rss()
        raise NetVladPortError(
            f"--max-memory {self.text}: too small for a {self.factory} index of {n} rows: the process holds "
            f"{held / 1e9:.2f} GB after {self.done} rows, adding takes {self.cost / 1e3:.1f} kB a row and the "
            f"index grows by {self.grows:.0f} B a row; give at least {self._final_peak() / 1e9:.2f}GB"
        )


def _flat_storage(index):
    """The ``IndexFlatCodes`` holding an index's vectors (HNSW's storage, or a Flat index itself); None."""
    import faiss

    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    if hasattr(index, "storage") and index.storage is not None:
        index = faiss.downcast_index(index.storage)
    return index if isinstance(index, faiss.IndexFlatCodes) and hasattr(index.codes, "resize") else None


def _reserve_codes(flat, n: int) -> None:
    """Give a flat storage's code array its final length once (a longer resize, then back: the capacity
    stays), so that adding never copies it into one twice as long beside the old."""
    used = flat.ntotal * flat.code_size
    flat.codes.resize(n * flat.code_size)
    flat.codes.resize(used)


def _no_polysemous_training(index) -> None:
    """Skip the polysemous code reordering faiss's factory turns on for PQ (``PQ64`` as ``PQ64np``): it only
    serves polysemous filtering, which search never uses, and takes minutes; the distances are the same."""
    import faiss

    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    with contextlib.suppress(RuntimeError, AttributeError):
        inner = faiss.downcast_index(faiss.extract_index_ivf(inner))
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False


def index_sidecar(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".json")


def save_index(index, info: dict, path, names: list[str], features_tag: dict | None, source) -> None:
    """``faiss.write_index`` to ``path`` and the JSON sidecar ``path.json``: the features' tag, where they
    came from and the database names in index order (both written atomically)."""
    import faiss

    from .io_utils import atomic_file

    side = {"format": INDEX_FORMAT, **info, "features": features_tag, "source": str(source), "names": list(names)}
    with atomic_file(index_sidecar(path)) as tmp:
        tmp.write_text(json.dumps(side) + "\n")
    with atomic_file(path) as tmp:
        faiss.write_index(index, str(tmp))


def open_index(path, features_tag: dict | None, names: list[str] | None = None):
    """A saved index and its sidecar; refused in one line if its descriptors were not these (another model,
    other options or image files, other names)."""
    import faiss

    path = Path(path)
    try:
        side = json.loads(index_sidecar(path).read_text())
        if side.get("format") != INDEX_FORMAT:
            raise ValueError("not a netvlad-port index sidecar")
    except (OSError, ValueError) as exc:
        raise NetVladPortError(f"{path}: no readable {index_sidecar(path).name} beside it ({exc}); build the index "
                               "with netvlad-port index") from None  # fmt: skip
    old = side.get("features")
    if features_tag is not None and old != features_tag:
        if not old:
            why = "untagged descriptors"
        elif old.get("model_sha256") != features_tag.get("model_sha256"):
            why = f"descriptors of another model ({str(old.get('model_sha256'))[:12]}, not "
            why += f"{str(features_tag.get('model_sha256'))[:12]})"
        else:
            keys = [k for k in sorted(set(old) | set(features_tag)) if old.get(k) != features_tag.get(k)]
            why = "descriptors made with other options or images (" + ", ".join(keys) + " differ)"
        raise NetVladPortError(f"{path}: built from {why}; rebuild it with netvlad-port index")
    if names is not None and (len(names) != len(side["names"]) or set(names) != set(side["names"])):
        raise NetVladPortError(f"{path}: built on {len(side['names'])} database images, not these {len(names)}; "
                               "rebuild it with netvlad-port index")  # fmt: skip
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise NetVladPortError(f"{path}: faiss cannot read it ({faiss_message(exc)})") from None
    return index, side


class IndexSearch:
    """Search with a faiss index whose ids are positions in ``index_names`` (mapped to the caller's database
    rows by ``to_rows``); ``params`` a faiss ParameterSpace string (``nprobe=32,efSearch=128``); on all
    GPUs with faiss-gpu (``index_cpu_to_all_gpus``)."""

    exact = False

    def __init__(self, index, about: str, to_rows: np.ndarray | None = None, params: str | None = None,
                 use_gpu: bool | None = None):  # fmt: skip
        import faiss

        self.to_rows = to_rows
        self.from_rows = None
        if to_rows is not None:
            self.from_rows = np.empty(len(to_rows), np.int64)
            self.from_rows[to_rows] = np.arange(len(to_rows))
        if params:
            try:
                faiss.ParameterSpace().set_index_parameters(index, params)
            except RuntimeError as exc:
                raise NetVladPortError(f"--index-params {params}: {faiss_message(exc)}") from None
        self.gpu = _gpu_count(use_gpu) > 0
        if self.gpu:
            index = faiss.index_cpu_to_all_gpus(index)
        self.index, self.about = index, about
        self.where = f"faiss {'GPU' if self.gpu else 'CPU'} ({about}{', ' + params if params else ''})"

    def _params(self, members):
        import faiss

        sel = faiss.IDSelectorBatch(np.ascontiguousarray(members, np.int64))
        try:
            ivf = faiss.extract_index_ivf(self.index)
            return faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe), sel
        except (RuntimeError, AttributeError):
            pass
        inner = self.index
        while isinstance(inner, faiss.IndexPreTransform):
            inner = faiss.downcast_index(inner.index)
        if hasattr(inner, "hnsw"):
            return faiss.SearchParametersHNSW(sel=sel, efSearch=inner.hnsw.efSearch), sel
        return faiss.SearchParameters(sel=sel), sel

    def search(self, q: np.ndarray, k: int, members: np.ndarray | None = None):
        q = np.ascontiguousarray(q, np.float32)
        k = min(k, self.index.ntotal if members is None else len(members))
        if members is None:
            ds, ids = self.index.search(q, k)
        else:
            index_ids = members if self.from_rows is None else self.from_rows[members]
            params, _sel = self._params(index_ids)
            try:
                ds, ids = self.index.search(q, k, params=params)
            except RuntimeError as exc:
                raise NetVladPortError(f"{self.about}: cannot search within groups "
                                       f"({faiss_message(exc)})") from None  # fmt: skip
        if self.to_rows is not None:
            ids = np.where(ids >= 0, self.to_rows[np.maximum(ids, 0)], -1)
        ds = np.where(ids < 0, np.inf, ds).astype(np.float32)
        order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), ds), axis=1)
        return np.take_along_axis(ids, order, 1), np.take_along_axis(ds, order, 1)


def make_searcher(db, db_names: list[str], index=None, features_tag: dict | None = None, vlad=None,
                  cluster_major: bool | None = None, params: str | None = None, max_memory=None,
                  chunk_size: int | None = None, use_gpu: bool | None = None):  # fmt: skip
    """The search of ``test`` and ``search``: exact and chunked without ``index`` (or with ``Flat``), else a
    saved index file (checked against ``features_tag`` and ``db_names``) or an index-factory string built
    here from ``db``."""
    db = as_descriptors(db)
    if index is None or (not looks_like_file(str(index)) and is_exact_factory(str(index))):
        return ExactSearch(db, max_memory, chunk_size, use_gpu)
    if looks_like_file(str(index)):
        if not Path(str(index)).is_file():
            raise NetVladPortError(f"--index {index}: no such index file (or give a faiss factory string)")
        faiss_index, side = open_index(index, features_tag, db_names)
        if faiss_index.d != db.dim:
            raise NetVladPortError(f"{index}: a {faiss_index.d}-D index, but the descriptors are {db.dim}-D")
        pos = {n: i for i, n in enumerate(db_names)}
        to_rows = np.fromiter((pos[n] for n in side["names"]), np.int64, len(side["names"]))
        about = f"{side['factory']}{' cluster-major' if side.get('cluster_major') else ''} from {Path(index).name}"
        return IndexSearch(faiss_index, about, to_rows, params, use_gpu)
    faiss_index, info = build_index(db, str(index), vlad, cluster_major, max_memory=max_memory, chunk_size=chunk_size)
    about = f"{index}{' cluster-major' if info['cluster_major'] else ''}, built here"
    return IndexSearch(faiss_index, about, None, params, use_gpu)
