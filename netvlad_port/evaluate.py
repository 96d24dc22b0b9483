"""``netvlad-port test``: a model on a dataset as MATLAB's ``testFromFn``, end to end -- features
(extracted or reused from the feature store), recall, ``results.json`` and figures."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from .feature_store import dataset_features
from .plots import plot_mosaic, plot_recall
from .retrieval import Results, test_from_fn


def save_results(res: Results, out_dir: str | os.PathLike) -> Path:
    from .io_utils import atomic_file

    path = Path(out_dir) / "results.json"
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(asdict(res), indent=1) + "\n")
    return path




def run_evaluation(model, db, out_dir: str | os.PathLike, dim: int | None = None, batch_size: int = 10,
                   device: str = "auto", resize_queries: int | None = None, quiet: bool = False) -> Results:
    """Recall@N of ``model`` on ``db``; features, ``results.json``, ``recall.png`` and ``mosaic.png``
    go to ``out_dir``."""
    out_dir = Path(out_dir)
    db.check_images()
    db_feats, q_feats = dataset_features(model, db, out_dir, batch_size=batch_size, device=device,
                                         resize_queries=resize_queries, progress=not quiet)
    res, retrieved = test_from_fn(db, db_feats, q_feats, dim=dim, return_ranks=True)
    save_results(res, out_dir)
    plot_recall([res], out_dir / "recall.png")
    plot_mosaic(db, retrieved, out_dir / "mosaic.png")
    return res
