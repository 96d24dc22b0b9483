"""GCL's evaluation protocol ``gcl`` ([docs/gcl.md](../../../docs/gcl.md#evaluation-as-gcl-reports-it)):
recall@K over the queries that have a ground-truth positive (mapillary_sls ``utils/eval.py``'s ``recall``
divides by the queries it is given, and GCL ``src/validate.py`` gives it those), and mAP@K as mapillary_sls
computes it. K: (1, 5, 10, 20) on MSLS (``validate.py:18``), GCL's Pitts/Tokyo list elsewhere."""

from __future__ import annotations

import numpy as np

from ...retrieval import Ranking, Results, register_protocol
from .msls import RECALL_NS as MSLS_RECALL_NS
from .msls import DbMsls

GCL_RECALL_NS = (1, 2, 3, 4, 5, 10, 15, 20, 25)  # GCL's K for Pitts and Tokyo


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


def gcl_recall_ns(db) -> tuple[int, ...]:
    """The K GCL reports for a dataset: MSLS's (1, 5, 10, 20), else its Pitts/Tokyo list."""
    return MSLS_RECALL_NS if isinstance(db, DbMsls) or getattr(db, "is_msls", False) else GCL_RECALL_NS


def gcl_results(r: Ranking) -> Results:
    """GCL ``src/validate.py``: recall@K and mAP@K over the queries with a ground-truth positive."""
    keep = np.flatnonzero(r.has_positive)
    if not len(keep):
        raise ValueError(f"{r.db.name}: no query has a ground-truth positive")
    positives = [r.positives[row] for row in keep]
    maps = [map_at_k([r.retrieved[row] for row in keep], positives, n) for n in r.recall_ns]
    return Results(r.db.name, r.recall_ns, r.hits[keep].mean(0).tolist(), len(keep), int((~r.has_positive).sum()),
                   r.dim, r.search, "gcl", maps)  # fmt: skip


register_protocol("gcl", gcl_results, gcl_recall_ns, "recall@K over queries with a positive, plus mAP@K (GCL)")
