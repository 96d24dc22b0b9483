#!/usr/bin/env python
"""One training epoch (SARE Gauss-Ind, the Pitts recipe: backPropToLayer conv5_1, batch 4 tuples of
1 + 1 + 10 images, cache refresh every 1000 queries and at epoch end) on synthetic Pitts-like data,
with the frozen-trunk reuse on (ours) and off (the frozen layers recomputed from the images for
every tuple and every refresh, the way public ports run). Prints the time split into building the
trunk cache, cache refreshes and tuple steps, peak RSS, and the ratio.

    python benchmarks/train_epoch.py [--db 200 --queries 148 --size 240x320 --width 1.0 --device cpu]

Pitts30k is 10,000 db + 7,416 queries at 480x640; pass those (and a GPU) for the real size.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from common import in_fresh_process


def _run(data: str, mode: str, width: float, k: int, device: str, q) -> None:
    import torch

    from netvlad_port.datasets.synthetic import load_synthetic
    from netvlad_port.fixtures import make_net
    from netvlad_port.train import Trainer, TrainOptions

    torch.manual_seed(0)
    spec = make_net("vd16", "vlad_preL2_intra", width=width, k=k, pca_dim=None, seed=0)
    tr = load_synthetic(data, "train")
    start = time.perf_counter()
    t = Trainer(
        spec,
        tr,
        None,
        TrainOptions(
            n_epoch=1, learning_rate=1e-3, back_prop_to_layer="conv5_1", trunk_cache=mode, test0=False, device=device
        ),
        Path(data) / f"run_{mode}",
        log=lambda *a: None,
    )
    t.run()
    total = time.perf_counter() - start
    q.put(
        dict(
            total=total,
            **t.timing,
            rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            cuda=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0,
            batches=tr.num_queries // 4,
        )
    )


def measure(*args):
    return in_fresh_process(_run, *args)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=int, default=200)
    ap.add_argument("--queries", type=int, default=148)
    ap.add_argument("--size", default="240x320")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from netvlad_port.datasets.synthetic import SyntheticConfig, make_synthetic

    h, w = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as data:
        make_synthetic(data, SyntheticConfig(db_per_split=args.db, queries_per_split=args.queries, image_hw=(h, w)))
        print(
            f"synthetic train split: {args.db} db + {args.queries} queries at {h}x{w}; VGG16 width {args.width} + "
            f"NetVLAD K={args.k}; SARE Gauss-Ind, conv5_1 up trained; device {args.device}"
        )
        rows = [(mode, measure(data, mode, args.width, args.k, args.device)) for mode in ("memory", "none")]
    base = rows[1][1]["total"]
    print("| frozen trunk | epoch s | trunk cache s | cache refresh s | tuple steps s | peak RSS MB | x baseline |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in rows:
        name = "computed once (ours)" if mode == "memory" else "recomputed (baseline)"
        print(
            f"| {name} | {r['total']:.1f} | {r['trunk']:.1f} | {r['cache_refresh']:.1f} | {r['tuples']:.1f} | "
            f"{r['rss']:.0f} | {base / r['total']:.2f} |"
        )


if __name__ == "__main__":
    main()
