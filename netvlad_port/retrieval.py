"""Retrieval and recall as MATLAB's ``testFromFn`` / ``testCore`` / ``recallAtN``
([docs/matlab.md#evaluation](../docs/matlab.md#evaluation)).

Exhaustive squared-L2 search (``yael_nn``; here faiss ``IndexFlatL2``, on the GPU when faiss-gpu
and a GPU are present), the dataset's ``nnSearchPostprocess`` (Tokyo 24/7 panorama NMS, TokyoTM
timestamps), and recall@N over **all** queries: a query without any ground-truth positive counts
as a failure. Results within equal distances are ordered by database index.

How the ranked retrievals become :class:`Results` is a protocol (:data:`PROTOCOLS`): ``matlab``
(``testFromFn``) is built in; plug-ins register others with :func:`register_protocol`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .extract import crop_to_dim
from .registry import Registry

RECALL_NS = (1, 2, 3, 4, 5) + tuple(range(10, 101, 5))  # testFromFn's [1:5, 10:5:100]
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
    protocol: str = "matlab"  # the name in PROTOCOLS that made these results (matlab: all queries count)
    maps: list[float] | None = None  # mAP@N for each of recall_ns, where the protocol reports it
    out_dir: str = ""  # where run_evaluation wrote results.json, the features and the figures
    pos_dist_thr: float | None = None  # metres: a retrieved image within it of the query is correct
    index: dict | None = None  # an approximate search: the index (factory, file, parameters)
    exact_sample: dict | None = None  # with it: exact and approximate recall@N on a sample of the queries
    ground_truth: bool = True  # False: the dataset has no public ground truth (MSLS test); recalls are empty
    pca_fit: str | None = None  # the model's PCA: fitted on "train" or "database:<dataset>"; None without PCA

    def recall(self, n: int) -> float:
        return self.recalls[self.recall_ns.index(n)]

    def table(self) -> str:
        """Printed as MATLAB's testFromFn does: one line per N (and mAP@N where the protocol has it)."""
        if not self.ground_truth:
            return f"{self.dataset}: no public ground truth, recall not computed (submit the predictions instead)"
        maps = self.maps or [None] * len(self.recalls)
        return "\n".join(f"{n:>4}: {r * 100:6.2f}" + (f"   mAP {m * 100:6.2f}" if m is not None else "")
                         for n, r, m in zip(self.recall_ns, self.recalls, maps))  # fmt: skip


def faiss_search(db_feats, q_feats: np.ndarray, k: int, use_gpu: bool | None = None, max_memory=None,
                 chunk_size: int | None = None):  # fmt: skip
    """(ids, squared distances), each Q x k, ascending, ties by database index; and a description.
    Exhaustive, as one ``IndexFlatL2`` over ``db_feats`` (an array or ``search_index.Descriptors``), but
    streamed a chunk at a time (``search_index.ExactSearch``: ``max_memory``, ``chunk_size``)."""
    from .search_index import ExactSearch

    searcher = ExactSearch(db_feats, max_memory, chunk_size, use_gpu)
    ids, ds = searcher.search(q_feats, k)
    return ids, ds, searcher.where


def search_groups(db) -> tuple[np.ndarray, np.ndarray] | None:
    """The dataset's optional ``search_groups()`` capability (``DbBase``'s docstring): (group of each
    database image, group of each query), or None when the whole database is searched."""
    groups = getattr(db, "search_groups", None)
    groups = groups() if callable(groups) else None
    if groups is None:
        return None
    db_group, q_group = (np.asarray(g).ravel() for g in groups)
    if len(db_group) != db.num_images or len(q_group) != db.num_queries:
        raise ValueError(f"{db.name}: search_groups() gives {len(db_group)} / {len(q_group)} groups for "
                         f"{db.num_images} / {db.num_queries} images")  # fmt: skip
    return db_group, q_group


def grouped_search(db, db_feats, q_feats: np.ndarray, qids: np.ndarray, k: int, use_gpu=None, searcher=None):
    """The search (``searcher``: ``search_index.ExactSearch`` of ``db_feats`` by default, or an
    ``IndexSearch``), inside each query's group of the database when the dataset has groups
    (:func:`search_groups`), one group at a time. Rows a group cannot fill are padded with id -1 and
    infinite distance."""
    from .search_index import ExactSearch

    searcher = searcher or ExactSearch(db_feats, use_gpu=use_gpu)
    groups = search_groups(db)
    if groups is None:
        ids, ds = searcher.search(q_feats, k)
        return ids, ds, searcher.where
    db_group, q_group = groups[0], groups[1][qids]
    ids, ds = np.full((len(qids), k), -1, np.int64), np.full((len(qids), k), np.inf, np.float32)
    for g in np.unique(q_group):
        rows, members = np.flatnonzero(q_group == g), np.flatnonzero(db_group == g)
        if len(members) == 0:
            continue
        g_ids, g_ds = searcher.search(q_feats[rows], k, members)
        ids[rows, : g_ids.shape[1]], ds[rows, : g_ids.shape[1]] = g_ids, g_ds
    return ids, ds, searcher.where + " per group"


@dataclass
class Ranking:
    """What a protocol turns into :class:`Results`: the post-processed top results of each evaluated
    query (``retrieved[row]``, database ids, for query ``query_ids[row]``), ``hits[row, j]``: a
    ground-truth positive among its first ``recall_ns[j]``, ``has_positive[row]``, and the query's
    ground-truth positives (``positives[row]``, ``pos_q``)."""

    db: object
    query_ids: np.ndarray
    retrieved: list[np.ndarray]
    hits: np.ndarray
    has_positive: np.ndarray
    recall_ns: list[int]
    dim: int
    search: str
    positives: list[np.ndarray]
    distances: list[np.ndarray] | None = None  # squared L2 of each of retrieved[row]


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: ``results(ranking) -> Results``; ``recall_ns(db)`` the N it reports
    for a dataset (``test``'s list); ``about`` a one-line description."""

    name: str
    results: Callable[[Ranking], Results]
    recall_ns: Callable[[object], tuple[int, ...]]
    about: str = ""


PROTOCOLS: Registry[Protocol] = Registry("protocol", builtins="netvlad_port.retrieval", key=str.lower)


def register_protocol(name: str, results: Callable[[Ranking], Results], recall_ns: Callable[[object], tuple[int, ...]],
                      about: str = "", replace: bool = False) -> Protocol:  # fmt: skip
    """Make ``results(ranking)`` the evaluation protocol ``name`` (see :class:`Protocol`)."""
    return PROTOCOLS.register(name, Protocol(name, results, recall_ns, about), replace=replace)


def matlab_results(r: Ranking) -> Results:
    """MATLAB ``testFromFn``: recall@N over all queries; a query without positives is a failure."""
    return Results(r.db.name, r.recall_ns, r.hits.mean(0).tolist(), len(r.query_ids), int((~r.has_positive).sum()),
                   r.dim, r.search)  # fmt: skip


register_protocol("matlab", matlab_results, lambda db: RECALL_NS, "recall@N over all queries (testFromFn)")


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
    return_ranking: bool = False,
    searcher=None,
    max_memory=None,
    chunk_size: int | None = None,
):
    """MATLAB ``testFromFn``: recall@N of query features against database features (rows; an array or
    ``search_index.Descriptors``, e.g. an h5 read a chunk at a time). ``query_ids``: evaluate only these
    queries (``testCore``'s ``nTestSample`` subset); ``q_feats`` then holds their features, in that order.
    ``protocol``: a name of :data:`PROTOCOLS`, which turns the ranking into the results (``matlab``: every
    query counts). The search is exact and streamed (``max_memory``, ``chunk_size``) unless ``searcher``
    (``search_index.make_searcher``: an approximate faiss index over the database rows, already cropped
    to ``dim``) is given. Returns the results, with ``return_ranks`` and the retrieved ids of each query,
    or with ``return_ranking`` the whole :class:`Ranking` (distances included)."""
    from .search_index import ExactSearch, as_descriptors

    make_results = PROTOCOLS[protocol].results
    import torch

    db_feats, q_feats = as_descriptors(db_feats), np.asarray(q_feats, np.float32)
    qids = np.arange(db.num_queries) if query_ids is None else np.asarray(query_ids)
    if len(db_feats) != db.num_images or q_feats.shape[0] != len(qids):
        raise ValueError(
            f"{db.name}: {len(db_feats)} db / {q_feats.shape[0]} query features for "
            f"{db.num_images} / {db.num_queries} images"
        )
    if dim:
        db_feats = db_feats.cropped(dim)
        q_feats = crop_to_dim(torch.from_numpy(q_feats), dim).numpy()
    searcher = searcher or ExactSearch(db_feats, max_memory, chunk_size, use_gpu)
    ids, ds, where = grouped_search(db, db_feats, q_feats, qids, n_top * db.retrieve_factor(), searcher=searcher)
    recall_ns = list(recall_ns)
    hits = np.zeros((len(qids), len(recall_ns)), bool)
    has_pos = np.zeros(len(qids), bool)
    retrieved, positives, distances = [], [], []
    for row, iq in enumerate(qids):
        found_row = ids[row] >= 0  # a group's search may return fewer than asked
        r_ids, r_ds = db.nn_search_postprocess(iq, ids[row][found_row], ds[row][found_row], n_top)
        distances.append(np.asarray(r_ds))
        positives.append(db.pos_q(iq))  # once per query: isPosQ and the count both read it
        is_pos = np.isin(r_ids, positives[-1])
        has_pos[row] = len(positives[-1]) > 0
        found = np.cumsum(is_pos) > 0
        if len(found):
            hits[row] = found[np.minimum(recall_ns, len(found)) - 1]
        retrieved.append(r_ids)
    ranking = Ranking(db, qids, retrieved, hits, has_pos, recall_ns, int(db_feats.dim), where, positives,
                      distances)  # fmt: skip
    res = make_results(ranking) if getattr(db, "has_ground_truth", True) else unscored_results(ranking, protocol)
    if res.pos_dist_thr is None:
        res.pos_dist_thr = getattr(db, "pos_dist_thr", None)
    if return_ranking:
        return res, ranking
    return (res, retrieved) if return_ranks else res


test_from_fn.__test__ = False  # not a pytest test


def unscored_results(r: Ranking, protocol: str) -> Results:
    """The results of a dataset without public ground truth (``has_ground_truth`` False): no recall."""
    return Results(r.db.name, r.recall_ns, [], len(r.query_ids), len(r.query_ids), r.dim, r.search, protocol,
                   ground_truth=False)  # fmt: skip


def retrieval_pairs(
    db_h5,
    q_h5,
    k: int,
    db_prefix: str | None = None,
    query_prefix: str | None = None,
    db_list=None,
    index=None,
    index_params: str | None = None,
    max_memory=None,
    chunk_size: int | None = None,
) -> tuple[list[tuple[str, str]], str]:
    """hloc's ``pairs_from_retrieval``: the k nearest database images of each query, from two feature
    files (names filtered by prefix, or the database names listed in ``db_list``). Within one file a
    query never retrieves itself; between two files an image of the same name is another image and
    counts, as in hloc. The database is read a chunk at a time (``max_memory``, ``chunk_size``) and
    searched exactly, or with ``index`` (a saved faiss index of ``db_h5``, or an index-factory string
    built here; ``search_index.make_searcher``). Returns ((query, db) pairs, search description)."""
    from pathlib import Path

    from .errors import NetVladPortError
    from .feature_store import h5_names, read_h5_descriptors, read_tag
    from .search_index import H5Descriptors, make_searcher

    if k < 1:
        raise NetVladPortError(f"-k {k}: pairs per query must be at least 1")
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
    db, q = H5Descriptors(db_h5, db_names), read_h5_descriptors(q_h5, q_names)
    if db.dim != q.shape[1]:
        raise NetVladPortError(f"{db_h5} has {db.dim}-D descriptors but {q_h5} {q.shape[1]}-D")
    one_file = Path(db_h5).resolve() == Path(q_h5).resolve()
    overlap = one_file and bool(set(db_names) & set(q_names))
    searcher = make_searcher(db, db_names, index, tags[0], params=index_params, max_memory=max_memory,
                             chunk_size=chunk_size)  # fmt: skip
    ids, _ = searcher.search(q, k + overlap)
    pairs = []
    for qn, row in zip(q_names, ids):
        hits = [db_names[j] for j in row if j >= 0 and not (one_file and db_names[j] == qn)]
        pairs += [(qn, d) for d in hits[:k]]
    return pairs, searcher.where


def evaluation_view(db, protocol: str, task: str = "im2im", **options):
    """The dataset as ``test``, the demo and training validation evaluate it under ``protocol``: its
    ``evaluation_view`` capability (MSLS's subtasks, sequence tasks and database panoramas); the options are
    refused for other datasets."""
    view = getattr(db, "evaluation_view", None)
    if callable(view):
        return view(protocol, task=task, **options)
    given = [k for k, v in options.items() if v is not None] + (["task"] if task != "im2im" else [])
    if given:
        from .datasets.db_base import DatasetError

        raise DatasetError(f"--{given[0].replace('_', '-')}: for MSLS datasets only ({db.name} has no such "
                               f"option)")  # fmt: skip
    return db
