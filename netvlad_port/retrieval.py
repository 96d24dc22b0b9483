"""Retrieval and recall as MATLAB's ``testFromFn`` / ``testCore`` / ``recallAtN``
([docs/matlab.md#evaluation](../docs/matlab.md#evaluation)).

Exhaustive squared-L2 search (``yael_nn``; here faiss ``IndexFlatL2``, on the GPU when faiss-gpu
and a GPU are present), the dataset's ``nnSearchPostprocess`` (Tokyo 24/7 panorama NMS, TokyoTM
timestamps), and recall@N over **all** queries: a query without any ground-truth positive counts
as a failure. Results within equal distances are ordered by database index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .extract import crop_to_dim

RECALL_NS = (1, 2, 3, 4, 5) + tuple(range(10, 101, 5))  # testFromFn's [1:5, 10:5:100]
GCL_RECALL_NS = (1, 2, 3, 4, 5, 10, 15, 20, 25)  # GCL's K for Pitts and Tokyo
PROTOCOLS = ("matlab", "gcl")
N_TOP = 100


@dataclass
class Results:
    dataset: str
    recall_ns: list[int]
    recalls: list[float]
    num_queries: int
    queries_without_positives: int
    dim: int
    search: str
    protocol: str = "matlab"  # matlab: all queries count; gcl: queries with a positive, plus mAP@K
    maps: list[float] | None = None  # mAP@N for each of recall_ns (protocol gcl)

    def recall(self, n: int) -> float:
        return self.recalls[self.recall_ns.index(n)]

    def table(self) -> str:
        """Printed as MATLAB's testFromFn does: one line per N (and mAP@N under the GCL protocol)."""
        maps = self.maps or [None] * len(self.recalls)
        return "\n".join(f"{n:>4}: {r * 100:6.2f}" + (f"   mAP {m * 100:6.2f}" if m is not None else "")
                         for n, r, m in zip(self.recall_ns, self.recalls, maps))  # fmt: skip


def faiss_search(db_feats: np.ndarray, q_feats: np.ndarray, k: int, use_gpu: bool | None = None):
    """(ids, squared distances), each Q x k, ascending, ties by database index; and a description."""
    import faiss

    db = np.ascontiguousarray(db_feats, np.float32)
    q = np.ascontiguousarray(q_feats, np.float32)
    k = min(k, len(db))
    index = faiss.IndexFlatL2(db.shape[1])
    where = "faiss CPU (IndexFlatL2)"
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if (use_gpu or use_gpu is None) and gpus > 0 and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        where = "faiss GPU (GpuIndexFlatL2)"
    elif use_gpu:
        where += " - faiss-gpu or a GPU is missing"
    index.add(db)
    ds, ids = index.search(q, k)
    order = np.lexsort((ids, ds), axis=1)  # by distance, then by id
    return np.take_along_axis(ids, order, 1), np.take_along_axis(ds, order, 1), where


def grouped_search(db, db_feats: np.ndarray, q_feats: np.ndarray, qids: np.ndarray, k: int, use_gpu=None):
    """:func:`faiss_search`, inside each query's group of the database when the dataset has groups
    (``db_group`` / ``q_group``: MSLS's cities, searched one at a time as GCL's ``validate.py``).
    Rows a group cannot fill are padded with id -1 and infinite distance."""
    if getattr(db, "db_group", None) is None:
        return faiss_search(db_feats, q_feats, k, use_gpu)
    ids, ds = np.full((len(qids), k), -1, np.int64), np.full((len(qids), k), np.inf, np.float32)
    q_group = np.asarray(db.q_group)[qids]
    where = ""
    for g in np.unique(q_group):
        rows, members = np.flatnonzero(q_group == g), np.flatnonzero(db.db_group == g)
        if len(members) == 0:
            continue
        g_ids, g_ds, where = faiss_search(db_feats[members], q_feats[rows], k, use_gpu)
        ids[rows, : g_ids.shape[1]], ds[rows, : g_ids.shape[1]] = members[g_ids], g_ds
    return ids, ds, where + " per city"


def test_from_fn(
    db,
    db_feats: np.ndarray,
    q_feats: np.ndarray,
    recall_ns=RECALL_NS,
    dim: int | None = None,
    n_top: int = N_TOP,
    use_gpu: bool | None = None,
    return_ranks: bool = False,
    query_ids=None,
    protocol: str = "matlab",
):
    """MATLAB ``testFromFn``: recall@N of query features against database features (rows).
    ``query_ids``: evaluate only these queries (``testCore``'s ``nTestSample`` subset); ``q_feats``
    then holds their features, in that order. ``protocol="gcl"``: GCL's evaluation instead -- the
    queries without a ground-truth positive are left out, and mAP@N is reported (docs/gcl.md)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    import torch

    db_feats, q_feats = np.asarray(db_feats, np.float32), np.asarray(q_feats, np.float32)
    qids = np.arange(db.num_queries) if query_ids is None else np.asarray(query_ids)
    if db_feats.shape[0] != db.num_images or q_feats.shape[0] != len(qids):
        raise ValueError(
            f"{db.name}: {db_feats.shape[0]} db / {q_feats.shape[0]} query features for "
            f"{db.num_images} / {db.num_queries} images"
        )
    if dim:
        db_feats = crop_to_dim(torch.from_numpy(db_feats), dim).numpy()
        q_feats = crop_to_dim(torch.from_numpy(q_feats), dim).numpy()
    ids, ds, where = grouped_search(db, db_feats, q_feats, qids, n_top * db.retrieve_factor(), use_gpu)
    recall_ns = list(recall_ns)
    hits = np.zeros((len(qids), len(recall_ns)), bool)
    retrieved, no_pos = [], 0
    for row, iq in enumerate(qids):
        found_row = ids[row] >= 0  # a city's search may return fewer than asked
        r_ids, _ = db.nn_search_postprocess(iq, ids[row][found_row], ds[row][found_row], n_top)
        is_pos = db.is_pos_q(iq, r_ids)
        no_pos += len(db.pos_q(iq)) == 0
        found = np.cumsum(is_pos) > 0
        if len(found):
            hits[row] = found[np.minimum(recall_ns, len(found)) - 1]
        retrieved.append(r_ids)
    if protocol == "matlab":
        res = Results(db.name, recall_ns, hits.mean(0).tolist(), len(qids), int(no_pos), int(db_feats.shape[1]), where)
        return (res, retrieved) if return_ranks else res
    keep = [row for row, iq in enumerate(qids) if len(db.pos_q(iq))]
    if not keep:
        raise ValueError(f"{db.name}: no query has a ground-truth positive")
    maps = [map_at_k([retrieved[r] for r in keep], [db.pos_q(qids[r]) for r in keep], n) for n in recall_ns]
    res = Results(db.name, recall_ns, hits[keep].mean(0).tolist(), len(keep), int(no_pos), int(db_feats.shape[1]),
                  where, "gcl", maps)  # fmt: skip
    return (res, retrieved) if return_ranks else res


test_from_fn.__test__ = False  # not a pytest test


def retrieval_pairs(
    db_h5, q_h5, k: int, db_prefix: str | None = None, query_prefix: str | None = None, db_list=None
) -> tuple[list[tuple[str, str]], str]:
    """hloc's ``pairs_from_retrieval``: the k nearest database images of each query, from two feature
    files (names filtered by prefix, or the database names listed in ``db_list``); a query never
    retrieves an image of its own name. Returns ((query, db) pairs, search description)."""
    from pathlib import Path

    from .errors import NetVladPortError
    from .feature_store import h5_names, read_h5_descriptors, read_tag

    db_names, q_names = sorted(h5_names(db_h5)), sorted(h5_names(q_h5))
    if db_list is not None:
        listed = [line.strip() for line in Path(db_list).read_text().splitlines() if line.strip()]
        missing = sorted(set(listed) - set(db_names))
        if missing:
            raise NetVladPortError(
                f"{db_list}: {len(missing)} names have no descriptor in {db_h5} (first: {missing[0]})"
            )
        db_names = listed
    db_names = [n for n in db_names if not db_prefix or n.startswith(db_prefix)]
    q_names = [n for n in q_names if not query_prefix or n.startswith(query_prefix)]
    for path, names in ((db_h5, db_names), (q_h5, q_names)):
        if not names:
            raise NetVladPortError(f"{path}: no global_descriptor datasets (after the prefix or list filter)")
    tags = [read_tag(Path(p), "h5") for p in (db_h5, q_h5)]
    if all(tags) and tags[0]["model_sha256"] != tags[1]["model_sha256"]:
        raise NetVladPortError(f"{db_h5} and {q_h5}: descriptors of different models")
    db, q = read_h5_descriptors(db_h5, db_names), read_h5_descriptors(q_h5, q_names)
    if db.shape[1] != q.shape[1]:
        raise NetVladPortError(f"{db_h5} has {db.shape[1]}-D descriptors but {q_h5} {q.shape[1]}-D")
    overlap = bool(set(db_names) & set(q_names))
    ids, _, where = faiss_search(db, q, k + overlap)
    pairs = []
    for qn, row in zip(q_names, ids):
        hits = [db_names[j] for j in row if j >= 0 and db_names[j] != qn]
        pairs += [(qn, d) for d in hits[:k]]
    return pairs, where


def average_precision_at_k(ranked, positives, k: int) -> float:
    """``apk`` of mapillary_sls (``mapillary_sls/utils/eval.py``): over the first k results, the mean
    of precision at each new hit, divided by min(#positives, k)."""
    positives = set(np.asarray(positives).ravel().tolist())
    if not positives:
        raise ValueError("average precision needs at least one positive")
    hits, score, seen = 0, 0.0, set()
    for i, r in enumerate(list(np.asarray(ranked).ravel())[:k]):
        if r in positives and r not in seen:
            hits += 1
            score += hits / (i + 1)
        seen.add(r)
    return score / min(len(positives), k)


def map_at_k(ranked: list, positives: list, k: int) -> float:
    """``mapk`` of mapillary_sls: the mean average precision at k over the queries given."""
    return float(np.mean([average_precision_at_k(r, p, k) for r, p in zip(ranked, positives)]))
