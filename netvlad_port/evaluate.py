"""Evaluation as MATLAB's ``testFromFn`` / ``testCore`` / ``recallAtN`` (reference §9).

Exhaustive squared-L2 search (``yael_nn``; here faiss ``IndexFlatL2``, on the GPU when faiss-gpu
and a GPU are present), the dataset's ``nnSearchPostprocess`` (Tokyo 24/7 panorama NMS, TokyoTM
timestamps), and recall@N over **all** queries: a query without any ground-truth positive counts
as a failure. Results within equal distances are ordered by database index.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .extract import crop_to_dim

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

    def recall(self, n: int) -> float:
        return self.recalls[self.recall_ns.index(n)]

    def table(self) -> str:
        """Printed as MATLAB's testFromFn does: one line per N."""
        return "\n".join(f"{n:>4}: {r * 100:6.2f}" for n, r in zip(self.recall_ns, self.recalls))


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


def test_from_fn(db, db_feats: np.ndarray, q_feats: np.ndarray, recall_ns=RECALL_NS, dim: int | None = None,
                 n_top: int = N_TOP, use_gpu: bool | None = None, return_ranks: bool = False, query_ids=None):
    """MATLAB ``testFromFn``: recall@N of query features against database features (rows).
    ``query_ids``: evaluate only these queries (``testCore``'s ``nTestSample`` subset); ``q_feats``
    then holds their features, in that order."""
    import torch

    db_feats, q_feats = np.asarray(db_feats, np.float32), np.asarray(q_feats, np.float32)
    qids = np.arange(db.num_queries) if query_ids is None else np.asarray(query_ids)
    if db_feats.shape[0] != db.num_images or q_feats.shape[0] != len(qids):
        raise ValueError(f"{db.name}: {db_feats.shape[0]} db / {q_feats.shape[0]} query features for "
                         f"{db.num_images} / {db.num_queries} images")
    if dim:
        db_feats = crop_to_dim(torch.from_numpy(db_feats), dim).numpy()
        q_feats = crop_to_dim(torch.from_numpy(q_feats), dim).numpy()
    ids, ds, where = faiss_search(db_feats, q_feats, n_top * db.retrieve_factor(), use_gpu)
    recall_ns = list(recall_ns)
    hits = np.zeros((len(qids), len(recall_ns)), bool)
    retrieved, no_pos = [], 0
    for row, iq in enumerate(qids):
        r_ids, _ = db.nn_search_postprocess(iq, ids[row], ds[row], n_top)
        is_pos = db.is_pos_q(iq, r_ids)
        no_pos += len(db.pos_q(iq)) == 0
        found = np.cumsum(is_pos) > 0
        if len(found):
            hits[row] = found[np.minimum(recall_ns, len(found)) - 1]
        retrieved.append(r_ids)
    res = Results(db.name, recall_ns, hits.mean(0).tolist(), len(qids), int(no_pos), int(db_feats.shape[1]), where)
    return (res, retrieved) if return_ranks else res


test_from_fn.__test__ = False  # not a pytest test


def model_fingerprint(model) -> str:
    """sha256 of the weights and layer names: tags stored features with the model that made them."""
    import hashlib

    h = hashlib.sha256()
    for layer in model.layers:
        h.update(f"{layer.name}:{layer.matlab_type};".encode())
        for w in layer.matlab_weights():
            h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def read_h5_descriptors(path: str | os.PathLike, names: list[str]) -> np.ndarray:
    """Rows of ``global_descriptor`` for ``names``, in that order (hloc layout)."""
    import h5py

    with h5py.File(path, "r") as f:
        missing = [n for n in names if n not in f]
        if missing:
            raise KeyError(f"{path}: {len(missing)} images have no descriptor (first: {missing[0]})")
        return np.stack([np.asarray(f[n]["global_descriptor"], np.float32) for n in names])


def dataset_features(model, db, out_dir: str | os.PathLike, batch_size: int = 10, device: str = "cpu",
                     resize_queries: int | None = None, progress: bool = True, num_workers: int | None = None):
    """Database and query descriptors of ``db``, extracted to ``out_dir/{db,q}.h5`` or reused from
    there (files made by another model are refused)."""
    import h5py

    from .errors import NetVladPortError
    from .extract import serial_all_feats

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = model_fingerprint(model)
    feats = []
    for kind, root, names, resize in (("db", db.db_path, db.db_image_fns, None),
                                      ("q", db.q_path, db.q_image_fns, resize_queries)):
        path = out_dir / f"{kind}.h5"
        if path.exists():
            with h5py.File(path, "r") as f:
                if f.attrs.get("model_sha256", tag) != tag:
                    raise NetVladPortError(f"{path}: features of another model; use another --out or delete it")
        serial_all_feats(model, names, path, root=root, batch_size=batch_size, device=device, progress=progress,
                         resize_shorter=resize, num_workers=num_workers)
        with h5py.File(path, "a") as f:
            f.attrs["model_sha256"] = tag
        feats.append(read_h5_descriptors(path, names))
    return feats[0], feats[1]


def save_results(res: Results, out_dir: str | os.PathLike) -> Path:
    from .io_utils import atomic_file

    path = Path(out_dir) / "results.json"
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(asdict(res), indent=1) + "\n")
    return path


def plot_recall(results: list[Results], path: str | os.PathLike, labels: list[str] | None = None) -> Path:
    """Recall@N curve(s) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io_utils import atomic_file

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
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def plot_mosaic(db, retrieved: list[np.ndarray], path: str | os.PathLike, n_queries: int = 6, top: int = 5,
                seed: int = 0, thumb: tuple[int, int] = (96, 128)) -> Path:
    """Query and its top-5 results per row; green frame: a ground-truth positive, red: not."""
    from PIL import Image, ImageDraw

    from .io_utils import atomic_file

    rng = np.random.default_rng(seed)
    qs = sorted(rng.choice(db.num_queries, size=min(n_queries, db.num_queries), replace=False).tolist())
    th, tw = thumb
    pad = 4
    canvas = Image.new("RGB", ((top + 1) * (tw + 2 * pad) + pad, len(qs) * (th + 2 * pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, iq in enumerate(qs):
        y = row * (th + 2 * pad) + pad
        items = [(db.q_image(iq), None)] + [(db.db_image(int(i)), bool(db.is_pos_q(iq, [int(i)])[0]))
                                            for i in retrieved[iq][:top]]
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
