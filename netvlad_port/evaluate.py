"""``netvlad-port test``: a model on a dataset as MATLAB's ``testFromFn``, end to end -- features
(extracted or reused from the feature store), recall, ``results.json`` and figures."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from .extract import serial_all_feats
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
):
    """Database and query descriptors of ``db``, extracted to ``out_dir/{db,q}.h5`` or reused from
    there (files made by another model or with other options are refused)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    feats = []
    for kind, root, names, resize in (("db", db.db_path, db.db_image_fns, None),
                                      ("q", db.q_path, db.q_image_fns, resize_queries)):  # fmt: skip
        path = out_dir / f"{kind}.h5"
        serial_all_feats(model, names, path, root=root, batch_size=batch_size, device=device, progress=progress,
                         resize_shorter=resize, num_workers=num_workers, precision=precision)  # fmt: skip
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


def run_evaluation(
    model,
    db,
    out_dir: str | os.PathLike,
    dim: int | None = None,
    batch_size: int = 10,
    device: str = "auto",
    resize_queries: int | None = None,
    quiet: bool = False,
    precision: str = "fp32",
    num_workers: int | None = None,
    protocol: str = "matlab",
) -> Results:
    """Recall@N of ``model`` on ``db`` under ``protocol`` (a name of ``retrieval.PROTOCOLS``, which also
    picks the N for the dataset); features, ``results.json``, ``recall.png`` and ``mosaic.png`` go to
    ``out_dir``."""
    recall_ns = PROTOCOLS[protocol].recall_ns(db)
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
    )
    res, retrieved = test_from_fn(db, db_feats, q_feats, recall_ns, dim=dim, return_ranks=True, protocol=protocol)
    save_results(res, out_dir)
    plot_recall([res], out_dir / "recall.png")
    plot_mosaic(db, retrieved, out_dir / "mosaic.png")
    return res
