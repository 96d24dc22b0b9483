"""Label providers: the similarity of database images to a query that losses with labels train on
(``LossEntry.labels`` names one). The core knows ``binary`` (a ground-truth positive or not, MATLAB's
``isPosQ``); plug-ins add others (GCL's ``graded``). A dataset with labels of its own overrides
``DbBase.similarity`` instead."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..registry import Registry

LabelProvider = Callable[..., np.ndarray]  # (db, iq, ids) -> similarities in [0, 1], float32
LABELS: Registry[LabelProvider] = Registry("label kind", builtins="netvlad_port.datasets.labels", key=str.lower)


def register_labels(name: str, provider: LabelProvider, replace: bool = False) -> LabelProvider:
    """Make ``provider(db, iq, ids)`` the label kind ``name``."""
    return LABELS.register(name, provider, replace=replace)


def binary(db, iq: int, ids) -> np.ndarray:
    """1 for a ground-truth positive of the query (``isPosQ``), else 0."""
    return db.is_pos_q(iq, ids).astype(np.float32)


register_labels("binary", binary)
