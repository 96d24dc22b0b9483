"""``netvlad-port test``: a model on a dataset as MATLAB's ``testFromFn``, end to end -- features
(extracted or reused from the feature store), recall, ``results.json`` and figures.

Features are reused only when they were made by the same model with the same options from the same
image files (``feature_store.images_stamp``: root, names, sizes, modification times); the default
results folder is keyed by the dataset's identity and by every option, so runs never share one by
accident ([docs/formats.md#evaluation-output](../docs/formats.md#evaluation-output))."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .errors import NetVladPortError
from .extract import check_dim, serial_all_feats
from .feature_store import read_h5_descriptors
from .io_utils import atomic_file
from .plots import plot_mosaic, plot_recall, save_preds
from .retrieval import N_TOP, PROTOCOLS, Results, test_from_fn
from .search_index import H5Descriptors


def dataset_features(
    model,
    db,
    out_dir: str | os.PathLike,
    batch_size: int = 10,
    device: str = "cpu",
    resize_queries: int | None = None,
    progress: bool = True,
    num_workers: int | None = None,
    precision: str = "fp32",
    force: bool = False,
):
    """Database and query descriptors of ``db``, extracted to ``out_dir/{db,q}.h5`` or reused from
    there (files made by another model, with other options or from other image files are refused;
    ``force`` replaces them). The database's come as ``search_index.H5Descriptors`` (read a chunk at a time
    by the search), the queries' as an array."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    feats = []
    for kind, root, names, resize in (("db", db.db_path, db.db_image_fns, None),
                                      ("q", db.q_path, db.q_image_fns, resize_queries)):  # fmt: skip
        path = out_dir / f"{kind}.h5"
        serial_all_feats(model, names, path, root=root, batch_size=batch_size, device=device, progress=progress,
                         resize_shorter=resize, num_workers=num_workers, precision=precision, force=force,
                         stamp=True)  # fmt: skip
        feats.append(H5Descriptors(path, names) if kind == "db" else read_h5_descriptors(path, names))
    return feats[0], feats[1]


def save_results(res: Results, out_dir: str | os.PathLike) -> Path:
    path = Path(out_dir) / "results.json"
    with atomic_file(path) as tmp:
        record = asdict(res)
        record["recall_at_n"] = {str(n): r for n, r in zip(res.recall_ns, res.recalls)}  # keyed by N
        if res.maps is not None:
            record["map_at_n"] = {str(n): m for n, m in zip(res.recall_ns, res.maps)}
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return path


def image_names(db) -> tuple[list[str], list[str]]:
    """Database and query image names relative to the folder that holds both (hloc's ``image_dir``), so a
    query and a database image of the same file name stay apart."""
    db_path, q_path = Path(db.db_path).resolve(), Path(db.q_path).resolve()
    top = Path(os.path.commonpath([db_path, q_path]))
    db_dir, q_dir = db_path.relative_to(top).as_posix(), q_path.relative_to(top).as_posix()

    def under(folder: str, names: list[str]) -> list[str]:
        return names if folder == "." else [f"{folder}/{n}" for n in names]

    return under(db_dir, list(db.db_image_fns)), under(q_dir, list(db.q_image_fns))


def save_predictions(ranking, k: int, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``predictions.csv`` (``query,rank,prediction,distance,correct``: the first ``k`` results of each query,
    squared L2, a ground-truth positive or not) and hloc's ``pairs.txt`` (``query db`` lines, the same
    results), names as :func:`image_names`."""
    import csv
    import io

    db_names, q_names = image_names(ranking.db)
    table, pairs = io.StringIO(), []
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["query", "rank", "prediction", "distance", "correct"])
    for row, iq in enumerate(ranking.query_ids):
        ids, ds = ranking.retrieved[row][:k], ranking.distances[row][:k]
        correct = np.isin(ids, ranking.positives[row])
        for rank, (i, d, ok) in enumerate(zip(ids, ds, correct), 1):
            writer.writerow([q_names[iq], rank, db_names[i], f"{d:.6g}", int(ok)])
            pairs.append(f"{q_names[iq]} {db_names[i]}\n")
    paths = Path(out_dir) / "predictions.csv", Path(out_dir) / "pairs.txt"
    for path, text in zip(paths, (table.getvalue(), "".join(pairs))):
        with atomic_file(path) as tmp:
            tmp.write_text(text)
    return paths


def write_key_predictions(ranking, k: int, path: str | os.PathLike) -> Path:
    """MSLS's predictions file (mapillary_sls ``evaluate.py``, its benchmark server, GCL
    ``extract_predictions.py:227-239``): per query, in query order, ``query_key pred_1 ... pred_k``, space
    separated; keys from the dataset's ``prediction_keys()`` (a sequence: its frames' keys joined by commas),
    else the image names' stems. Written atomically."""
    keys = getattr(ranking.db, "prediction_keys", None)
    if callable(keys):
        db_keys, q_keys = keys()
    else:
        db_keys, q_keys = ([Path(n).stem for n in names] for names in (ranking.db.db_image_fns, ranking.db.q_image_fns))
    lines = [" ".join([q_keys[iq]] + [db_keys[i] for i in ranking.retrieved[row][:k]]) + "\n"
             for row, iq in enumerate(ranking.query_ids)]  # fmt: skip
    with atomic_file(path) as tmp:
        tmp.write_text("".join(lines))
    return Path(path)


def pca_fit_of(model) -> str | None:
    """Where the model's (W)PCA was fitted: its ``meta["pca_fit"]`` (``pca`` records it), else ``train`` for a
    network ending in a WPCA or PCA layer (``addPCA``), else None."""
    meta = getattr(model, "meta", {}) or {}
    if meta.get("pca_fit"):
        return str(meta["pca_fit"])
    names = getattr(model, "names", None) or []
    return "train" if {"WPCA", "PCA"} & set(names) else None


def dataset_key(db) -> str:
    """The dataset's identity as a short hash: its name, source (spec file or folder) and image folders,
    resolved, its image lists, and its posDistThr unless 25 m."""
    import hashlib

    where = [str(Path(p).resolve()) for p in (db.source or ".", db.db_path, db.q_path)]
    text = json.dumps([db.name, where, db.db_image_fns, db.q_image_fns])
    if getattr(db, "pos_dist_thr", 25.0) != 25.0:  # another radius of positives: other results
        text += f"posDistThr {db.pos_dist_thr:g}"
    return hashlib.sha256(text.encode()).hexdigest()


def results_dir(model, db, **options) -> Path:
    """The default ``test`` folder: ``results/<dataset>-[<posDistThr>m-]<its identity>/<model>-<options>`` (the
    radius named unless 25 m), so that another dataset with the same name, or other options, never share one."""
    import hashlib

    from .feature_store import model_fingerprint

    opts = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()
    tail = f"{model_fingerprint(model)[:12]}-{getattr(model, 'normalize_mode', 'exact')}-{opts[:8]}"
    thr = getattr(db, "pos_dist_thr", 25.0)
    radius = "" if thr == 25.0 else f"{thr:g}m-"
    return Path("results") / f"{db.name}-{radius}{dataset_key(db)[:8]}" / tail


def check_recall_ns(recall_ns) -> tuple[int, ...]:
    """The N of ``--recall-ns``, ascending and once each; an N below 1 is refused."""
    ns = tuple(sorted({int(n) for n in recall_ns}))
    if not ns or ns[0] < 1:
        raise NetVladPortError(f"--recall-ns {','.join(map(str, recall_ns))}: each N must be at least 1")
    return ns


def run_evaluation(
    model,
    db,
    out_dir: str | os.PathLike | None = None,
    dim: int | None = None,
    batch_size: int = 10,
    device: str = "auto",
    resize_queries: int | None = None,
    quiet: bool = False,
    precision: str = "fp32",
    num_workers: int | None = None,
    protocol: str = "matlab",
    force: bool = False,
    recall_ns=None,
    num_preds_to_save: int = 0,
    save_only_wrong: bool = False,
    index: str | None = None,
    index_params: str | None = None,
    max_memory=None,
    chunk_size: int | None = None,
    exact_sample: int = 1000,
    cluster_major: bool | None = None,
    predictions_out: str | os.PathLike | None = None,
) -> Results:
    """Recall@N of ``model`` on ``db`` under ``protocol`` (a name of ``retrieval.PROTOCOLS``, which also
    picks the N for the dataset unless ``recall_ns`` are given); features, ``results.json``,
    ``predictions.csv``, ``pairs.txt``, ``recall.png`` and ``mosaic.png`` go to ``out_dir`` (default
    :func:`results_dir`), and with ``num_preds_to_save`` the first N predictions of each query (or only of
    those whose first is wrong) to ``out_dir/preds``. ``force``: replace features that cannot be reused.
    The search is exact, the database read from ``db.h5`` a chunk at a time (``max_memory``, ``chunk_size``),
    or with ``index`` (a saved faiss index of ``db.h5`` or an index-factory string; ``index_params``, and
    ``cluster_major`` for raw VLAD); then recall@N is also measured exactly on ``exact_sample`` queries
    (all if fewer) and both go into ``results.json``. ``predictions_out``: also write MSLS's submission file
    there (:func:`write_key_predictions`). A dataset with ``frames`` (an MSLS sequence task) extracts the
    frames' features and ``combine``s them into the sequences'."""
    recall_ns = check_recall_ns(recall_ns) if recall_ns else PROTOCOLS[protocol].recall_ns(db)
    check_dim(model, dim)
    if out_dir is None:
        out_dir = results_dir(model, db, dim=dim, resize_queries=resize_queries, precision=precision, protocol=protocol)
    out_dir = Path(out_dir)
    frames = getattr(db, "frames", db)
    if frames is not db and (index is not None or dim):
        flag = "index" if index is not None else "dim"
        raise NetVladPortError(f"--{flag}: {db.name} ranks sequences (concatenated frame descriptors), which only "
                               f"the exact search of whole descriptors does")  # fmt: skip
    frames.check_images()
    db_feats, q_feats = dataset_features(
        model,
        frames,
        out_dir,
        batch_size=batch_size,
        device=device,
        resize_queries=resize_queries,
        progress=not quiet,
        precision=precision,
        num_workers=num_workers,
        force=force,
    )
    if frames is not db:
        db_feats, q_feats = db.combine(db_feats, q_feats)
    n_top = max(N_TOP, *recall_ns)
    searcher = None
    if index is not None:
        searcher = approximate_searcher(model, db_feats.cropped(dim), out_dir, index, index_params, max_memory,
                                        chunk_size, cluster_major, dim)  # fmt: skip
    res, ranking = test_from_fn(db, db_feats, q_feats, recall_ns, dim=dim, n_top=n_top, protocol=protocol,
                                return_ranking=True, searcher=searcher, max_memory=max_memory,
                                chunk_size=chunk_size)  # fmt: skip
    if searcher is not None and not getattr(searcher, "exact", False):
        res.index = {"index": str(index), "params": index_params, "search": searcher.where}
        res.exact_sample = exact_on_sample(db, db_feats, q_feats, recall_ns, dim, n_top, protocol, searcher,
                                           exact_sample, max_memory, chunk_size)  # fmt: skip
    res.out_dir = str(out_dir)
    res.pca_fit = pca_fit_of(model)
    save_results(res, out_dir)
    save_predictions(ranking, max(recall_ns), out_dir)
    if predictions_out is not None:
        write_key_predictions(ranking, max(recall_ns), predictions_out)
    if res.ground_truth:
        plot_recall([res], out_dir / "recall.png")
    plot_mosaic(db, ranking.retrieved, out_dir / "mosaic.png")
    if num_preds_to_save:
        save_preds(db, ranking.retrieved, out_dir / "preds", num_preds_to_save, save_only_wrong)
    return res


def approximate_searcher(model, db_feats, out_dir, index, index_params, max_memory, chunk_size, cluster_major, dim):
    """``test --index``: the saved index (checked against ``out_dir/db.h5``'s tag and names) or one built from
    a factory string; raw VLAD is reordered cluster-major before PQ unless ``cluster_major`` is False."""
    from .feature_store import read_tag
    from .search_index import make_searcher, vlad_layout

    vlad = vlad_layout(model) if not dim else None
    return make_searcher(db_feats, db_feats.names, index, read_tag(Path(out_dir) / "db.h5", "h5"), vlad,
                         cluster_major, index_params, max_memory, chunk_size)  # fmt: skip


def exact_on_sample(db, db_feats, q_feats, recall_ns, dim, n_top, protocol, searcher, n_sample, max_memory,
                    chunk_size) -> dict:  # fmt: skip
    """Recall@N of the exact search and of ``searcher`` on the same random sample of ``n_sample`` queries
    (all if fewer; seed 0), and how often the approximate top-1 / top-10 hold the exact one's."""
    n_q = len(q_feats)
    qids = np.arange(n_q) if n_sample >= n_q else np.sort(np.random.default_rng(0).choice(n_q, n_sample, False))
    runs = {}
    for name, s in (("exact", None), ("approximate", searcher)):
        runs[name] = test_from_fn(db, db_feats, q_feats[qids], recall_ns, dim=dim, n_top=n_top, query_ids=qids,
                                  protocol=protocol, return_ranking=True, searcher=s, max_memory=max_memory,
                                  chunk_size=chunk_size)  # fmt: skip
    (exact, e_rank), (approx, a_rank) = runs["exact"], runs["approximate"]
    same = {}
    for n in (1, 10):
        agree = [len(set(e[:n]) & set(a[:n])) / max(1, len(e[:n])) for e, a in zip(e_rank.retrieved, a_rank.retrieved)]
        same[str(n)] = float(np.mean(agree)) if agree else 0.0
    return {"num_queries": len(qids), "seed": 0, "search": exact.search,
            "recall_at_n": {str(n): r for n, r in zip(exact.recall_ns, exact.recalls)},
            "approximate_recall_at_n": {str(n): r for n, r in zip(approx.recall_ns, approx.recalls)},
            "exact_neighbours_found_at_n": same}  # fmt: skip
