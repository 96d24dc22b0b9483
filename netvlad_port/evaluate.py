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

from .extract import check_dim, serial_all_feats
from .feature_store import read_h5_descriptors
from .io_utils import atomic_file
from .plots import plot_mosaic, plot_recall
from .retrieval import PROTOCOLS, Results, test_from_fn


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
    ``force`` replaces them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    feats = []
    for kind, root, names, resize in (("db", db.db_path, db.db_image_fns, None),
                                      ("q", db.q_path, db.q_image_fns, resize_queries)):  # fmt: skip
        path = out_dir / f"{kind}.h5"
        serial_all_feats(model, names, path, root=root, batch_size=batch_size, device=device, progress=progress,
                         resize_shorter=resize, num_workers=num_workers, precision=precision, force=force,
                         stamp=True)  # fmt: skip
        feats.append(read_h5_descriptors(path, names))
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


def dataset_key(db) -> str:
    """The dataset's identity as a short hash: its name, source (spec file or folder) and image folders,
    resolved, and its image lists."""
    import hashlib

    where = [str(Path(p).resolve()) for p in (db.source or ".", db.db_path, db.q_path)]
    text = json.dumps([db.name, where, db.db_image_fns, db.q_image_fns])
    return hashlib.sha256(text.encode()).hexdigest()


def results_dir(model, db, **options) -> Path:
    """The default ``test`` folder: ``results/<dataset>-<its identity>/<model>-<options>``, so that another
    dataset with the same name, or other options, never share one."""
    import hashlib

    from .feature_store import model_fingerprint

    opts = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()
    tail = f"{model_fingerprint(model)[:12]}-{getattr(model, 'normalize_mode', 'exact')}-{opts[:8]}"
    return Path("results") / f"{db.name}-{dataset_key(db)[:8]}" / tail


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
) -> Results:
    """Recall@N of ``model`` on ``db`` under ``protocol`` (a name of ``retrieval.PROTOCOLS``, which also
    picks the N for the dataset); features, ``results.json``, ``recall.png`` and ``mosaic.png`` go to
    ``out_dir`` (default :func:`results_dir`). ``force``: replace features that cannot be reused."""
    recall_ns = PROTOCOLS[protocol].recall_ns(db)
    check_dim(model, dim)
    if out_dir is None:
        out_dir = results_dir(model, db, dim=dim, resize_queries=resize_queries, precision=precision, protocol=protocol)
    out_dir = Path(out_dir)
    db.check_images()
    db_feats, q_feats = dataset_features(
        model,
        db,
        out_dir,
        batch_size=batch_size,
        device=device,
        resize_queries=resize_queries,
        progress=not quiet,
        precision=precision,
        num_workers=num_workers,
        force=force,
    )
    res, retrieved = test_from_fn(db, db_feats, q_feats, recall_ns, dim=dim, return_ranks=True, protocol=protocol)
    res.out_dir = str(out_dir)
    save_results(res, out_dir)
    plot_recall([res], out_dir / "recall.png")
    plot_mosaic(db, retrieved, out_dir / "mosaic.png")
    return res
