"""Figures: recall@N curves, retrieval mosaics and the per-epoch validation recall of a training run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .io_utils import atomic_file

if TYPE_CHECKING:
    from .retrieval import Results


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)
    return Path(path)


def plot_recall(results: list[Results], path: str | os.PathLike, labels: list[str] | None = None) -> Path:
    """Recall@N curve(s) as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, r in enumerate(results):
        ax.plot(r.recall_ns, np.array(r.recalls) * 100, marker="o", ms=3, label=(labels or [r.dataset])[i])
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 5, 10, 20, 50, 100], labels=["1", "2", "5", "10", "20", "50", "100"])
    ax.set_xlabel("N (number of top retrieved database images)")
    ax.set_ylabel("Recall@N (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"{results[0].dataset}: recall@1 {results[0].recalls[0] * 100:.1f}%")
    fig.tight_layout()
    return _save(fig, path)


def plot_mosaic(
    db,
    retrieved: list[np.ndarray],
    path: str | os.PathLike,
    n_queries: int = 6,
    top: int = 5,
    seed: int = 0,
    thumb: tuple[int, int] = (96, 128),
) -> Path:
    """Query and its top-5 results per row, under a legend: green frame, a ground-truth positive
    (within posDistThr of the query); red, not."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    qs = sorted(rng.choice(db.num_queries, size=min(n_queries, db.num_queries), replace=False).tolist())
    th, tw = thumb
    pad, legend = 4, 22
    canvas = Image.new("RGB", ((top + 1) * (tw + 2 * pad) + pad, legend + len(qs) * (th + 2 * pad)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 5), "query", fill="black")
    draw.text((tw + 3 * pad, 5), f"top {top}:", fill="black")
    draw.text((tw + 3 * pad + 60, 5), f"green = correct (within {db.pos_dist_thr:g} m)", fill="green")
    draw.text((tw + 3 * pad + 60 + 230, 5), "red = wrong", fill="red")
    for row, iq in enumerate(qs):
        y = legend + row * (th + 2 * pad) + pad
        items = [(db.q_image(iq), None)] + [
            (db.db_image(int(i)), bool(db.is_pos_q(iq, [int(i)])[0])) for i in retrieved[iq][:top]
        ]
        for col, (p, ok) in enumerate(items):
            x = col * (tw + 2 * pad) + pad + (pad if col else 0)
            try:
                im = Image.open(p).convert("RGB").resize((tw, th))
            except OSError:
                im = Image.new("RGB", (tw, th), "grey")
            canvas.paste(im, (x, y))
            if ok is not None:
                draw.rectangle([x - 3, y - 3, x + tw + 2, y + th + 2], outline="green" if ok else "red", width=3)
    with atomic_file(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def plot_epochs(history, recall_ns, path: str | os.PathLike) -> Path | None:
    """Validation recall@1/5/10 per epoch of a training run (epoch 0: off-the-shelf), as a PNG."""
    if not history.val_recall:
        return None
    ns = list(recall_ns)
    series = {0: history.pretrain_val_recall} if history.pretrain_val_recall else {}
    series.update({e: history.val_recall[e] for e in sorted(history.val_recall)})
    fig, ax = _pyplot().subplots(figsize=(6, 4), dpi=100)
    for n in (1, 5, 10):
        if n in ns:
            ax.plot(list(series), [series[e][ns.index(n)] * 100 for e in series], marker="o", ms=3, label=f"recall@{n}")
    ax.set_xlabel("epoch (0: off-the-shelf)")
    ax.set_ylabel("val recall (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
