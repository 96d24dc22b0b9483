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


STANDARD_NS = (1, 2, 5, 10, 20, 50, 100)


def _thresholds(results: list[Results]) -> str:
    thrs = sorted({r.pos_dist_thr for r in results if r.pos_dist_thr is not None})
    return "/".join(f"{t:g}" for t in thrs)


def recall_figure(results: list[Results], labels: list[str] | None = None):
    """The Figure of :func:`plot_recall`: recall@N per result (and mAP@N where the protocol gives it),
    the title naming each curve's recall at its first N, the legend the positives' radius."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    labels = labels or [r.dataset for r in results]
    for label, r in zip(labels, results):
        (line,) = ax.plot(r.recall_ns, np.array(r.recalls) * 100, marker="o", ms=3, label=label)
        if r.maps is not None:
            ax.plot(r.recall_ns, np.array(r.maps) * 100, ls="--", marker="s", ms=3, color=line.get_color(),
                    label=f"{label} mAP")  # fmt: skip
    ns = sorted({n for r in results for n in r.recall_ns})
    ticks = ns if len(ns) <= 8 else [n for n in STANDARD_NS if ns[0] <= n <= ns[-1]]
    ax.set_xscale("log")
    ax.set_xticks(ticks, labels=[str(n) for n in ticks])
    ax.set_xlabel("N (number of top retrieved database images)")
    ax.set_ylabel("Recall@N (%)" + (" / mAP@N (%)" if any(r.maps is not None for r in results) else ""))
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    thr = _thresholds(results)
    ax.legend(loc="lower right", title=f"positives within {thr} m" if thr else None)
    ax.set_title(recall_title(results, labels))
    fig.tight_layout()
    return fig


def recall_title(results: list[Results], labels: list[str]) -> str:
    """``dataset: recall@N1 x%`` (N1 the first N), with each curve's label where there are several, and mAP."""

    def at_first(r: Results) -> str:
        text = f"{r.recalls[0] * 100:.1f}%"
        return text + (f" (mAP {r.maps[0] * 100:.1f}%)" if r.maps is not None else "")

    head = f"{results[0].dataset}: recall@{results[0].recall_ns[0]}"
    if len(results) == 1:
        return f"{head} {at_first(results[0])}"
    return f"{head} " + ", ".join(f"{label} {at_first(r)}" for label, r in zip(labels, results))


def plot_recall(results: list[Results], path: str | os.PathLike, labels: list[str] | None = None) -> Path:
    """Recall@N curve(s) as a PNG (``plotResults``)."""
    return _save(recall_figure(results, labels), path)


LABEL_H = 26  # two lines of image name under each thumbnail


def _label(name: str, chars: int) -> str:
    """``name`` in at most two lines of ``chars`` characters (the middle of a longer one left out)."""
    if len(name) > 2 * chars:
        name = name[: chars - 3] + "..." + name[-chars:]
    return name if len(name) <= chars else name[:chars] + "\n" + name[chars:]


def _draw_row(canvas, draw, items: list[tuple], y: int, thumb: tuple[int, int], pad: int) -> None:
    """One mosaic row at height ``y``: (image path, name, correct or None for the query) per column, each
    thumbnail framed green (correct) or red (wrong), its name under it."""
    from PIL import Image

    th, tw = thumb
    for col, (p, name, ok) in enumerate(items):
        x = col * (tw + 2 * pad) + pad + (pad if col else 0)
        try:
            im = Image.open(p).convert("RGB").resize((tw, th))
        except OSError:
            im = Image.new("RGB", (tw, th), "grey")
        canvas.paste(im, (x, y))
        if ok is not None:
            draw.rectangle([x - 3, y - 3, x + tw + 2, y + th + 2], outline="green" if ok else "red", width=3)
        draw.text((x, y + th + 4), _label(name, tw // 6), fill="black")


def _row_items(db, iq: int, ids, top: int) -> list[tuple]:
    """Query ``iq`` and its first ``top`` results ``ids`` as :func:`_draw_row` items."""
    positives = set(db.pos_q(iq).tolist())
    return [(db.q_image(iq), db.q_image_fns[iq], None)] + [
        (db.db_image(int(i)), db.db_image_fns[int(i)], int(i) in positives) for i in ids[:top]
    ]


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
    (within posDistThr of the query); red, not. Each image's name is under it."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    qs = sorted(rng.choice(db.num_queries, size=min(n_queries, db.num_queries), replace=False).tolist())
    th, tw = thumb
    pad, legend = 4, 22
    row_h = th + 2 * pad + LABEL_H
    canvas = Image.new("RGB", ((top + 1) * (tw + 2 * pad) + pad, legend + len(qs) * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 5), "query", fill="black")
    draw.text((tw + 3 * pad, 5), f"top {top}:", fill="black")
    draw.text((tw + 3 * pad + 60, 5), f"green = correct (within {db.pos_dist_thr:g} m)", fill="green")
    draw.text((tw + 3 * pad + 60 + 230, 5), "red = wrong", fill="red")
    for row, iq in enumerate(qs):
        _draw_row(canvas, draw, _row_items(db, iq, retrieved[iq], top), legend + row * row_h + pad, thumb, pad)
    with atomic_file(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def save_preds(
    db,
    retrieved: list[np.ndarray],
    out_dir: str | os.PathLike,
    top: int,
    only_wrong: bool = False,
    thumb: tuple[int, int] = (192, 256),
) -> list[Path]:
    """VPR-methods-evaluation's ``preds/``: ``<query index>.jpg`` per query, the query and its first ``top``
    predictions framed green (correct) or red (wrong); ``only_wrong``: only queries whose first is wrong."""
    from PIL import Image, ImageDraw

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    th, tw = thumb
    pad, digits = 4, len(str(max(db.num_queries - 1, 0)))
    written = []
    for iq, ids in enumerate(retrieved):
        items = _row_items(db, iq, ids, top)
        if only_wrong and len(items) > 1 and items[1][2]:
            continue
        canvas = Image.new("RGB", ((top + 1) * (tw + 2 * pad) + pad, th + 2 * pad + LABEL_H), "white")
        _draw_row(canvas, ImageDraw.Draw(canvas), items, pad, thumb, pad)
        path = out_dir / f"{iq:0{digits}d}.jpg"
        with atomic_file(path) as tmp:
            canvas.save(tmp, format="JPEG", quality=90)
        written.append(path)
    return written


def epochs_figure(history, recall_ns, best: int | None = None, epoch_loss: dict[int, float] | None = None,
                  title: str = ""):  # fmt: skip
    """The Figure of :func:`plot_epochs`, or None without validation recall."""
    from matplotlib.ticker import MaxNLocator

    if not history.val_recall:
        return None
    ns = list(recall_ns)
    series = {0: history.pretrain_val_recall} if history.pretrain_val_recall else {}
    series.update({e: history.val_recall[e] for e in sorted(history.val_recall)})
    fig, ax = _pyplot().subplots(figsize=(6, 4), dpi=100)
    for n in (1, 5, 10):
        if n in ns:
            ax.plot(list(series), [series[e][ns.index(n)] * 100 for e in series], marker="o", ms=3, label=f"recall@{n}")
    if best is not None:
        ax.axvline(best, color="grey", ls=":", label=f"best epoch {best}")
    handles, labels = ax.get_legend_handles_labels()
    if epoch_loss:
        ax2 = ax.twinx()
        epochs = sorted(epoch_loss)
        ax2.plot(epochs, [epoch_loss[e] for e in epochs], color="black", ls="--", marker="x", ms=4,
                 label="training loss (epoch mean)")  # fmt: skip
        ax2.set_ylabel("training loss")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0: off-the-shelf)")
    ax.set_ylabel("val recall (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(handles, labels, fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_epochs(history, recall_ns, path: str | os.PathLike, best: int | None = None,
                epoch_loss: dict[int, float] | None = None, title: str = "") -> Path | None:  # fmt: skip
    """Validation recall@1/5/10 per epoch of a training run (epoch 0: off-the-shelf) as a PNG, the ``best``
    epoch marked and the mean training loss of each epoch on a second axis."""
    fig = epochs_figure(history, recall_ns, best, epoch_loss, title)
    return None if fig is None else _save(fig, path)
