#!/usr/bin/env python
"""Extraction throughput and peak memory: netvlad-port against a straightforward baseline.

Model: full-size VGG16 + NetVLAD (K=64) + WPCA-4096 with random weights (35 layers). Images:
random 480 x 640 JPEGs. Each configuration runs in its own process so peak RSS is its own.

* ours: ``serial_all_feats`` (DataLoader decoding workers, size-grouped batches, inference_mode),
  for each batch size and precision;
* baseline: how most public ports extract -- a plain ``nn.Sequential`` VGG16 (relu then pool), a
  NetVLAD layer with a loop over clusters, a Linear WPCA, one image at a time decoded in the loop.

Prints images/s, peak RSS (and CUDA peak), and our speed as a ratio to the baseline.
    python benchmarks/extract.py [--images 16] [--batch-sizes 1,4,8] [--precisions fp32,bf16] [--device cpu]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import in_fresh_process
from torch import nn


def make_images(folder: Path, n: int, h: int, w: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


class BaselineNetVLAD(nn.Module):
    """The common public-port NetVLAD: soft-assignment conv, then a loop over clusters."""

    def __init__(self, centroids: torch.Tensor, assign: torch.Tensor):
        super().__init__()
        self.centroids = nn.Parameter(centroids)  # K x D
        self.conv = nn.Conv2d(centroids.shape[1], centroids.shape[0], 1, bias=False)
        self.conv.weight.data = assign.t()[:, :, None, None].contiguous()

    def forward(self, x):
        n, d = x.shape[:2]
        x = F.normalize(x, dim=1)
        a = F.softmax(self.conv(x).view(n, len(self.centroids), -1), dim=1)
        xf = x.view(n, d, -1)
        vlad = torch.zeros(n, len(self.centroids), d, dtype=x.dtype, device=x.device)
        for k in range(len(self.centroids)):
            residual = xf - self.centroids[k][None, :, None]
            vlad[:, k] = (residual * a[:, k : k + 1]).sum(-1)
        vlad = F.normalize(vlad, dim=2)
        return F.normalize(vlad.transpose(1, 2).reshape(n, -1), dim=1)


def baseline_model(spec) -> nn.Module:
    mods, convs = [], [l for l in spec.layers if l.type == "conv" and l.name != "WPCA"]
    for i, l in enumerate(convs):
        w = torch.from_numpy(l.weights[0].transpose(3, 2, 0, 1).copy())
        conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
        conv.weight.data, conv.bias.data = w, torch.from_numpy(l.weights[1].copy())
        mods.append(conv)
        if i < len(convs) - 1:
            mods.append(nn.ReLU(inplace=True))
        if l.name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3"):
            mods.append(nn.MaxPool2d(2, 2))
    vlad = next(l for l in spec.layers if l.type == "layerVLAD")
    wpca = next(l for l in spec.layers if l.name == "WPCA")
    pca = nn.Linear(wpca.weights[0].shape[2], wpca.weights[0].shape[3])
    pca.weight.data = torch.from_numpy(wpca.weights[0][0, 0].T.copy())
    pca.bias.data = torch.from_numpy(wpca.weights[1].copy())
    net = nn.Sequential(
        *mods,
        BaselineNetVLAD(
            torch.from_numpy(-vlad.weights[1][0, 0].T.copy()), torch.from_numpy(vlad.weights[0][0, 0].copy())
        ),
        pca,
    )
    return net.eval()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(kind: str, folder: str, spec_args: dict, batch: int, precision: str, device: str, q) -> None:
    from netvlad_port.fixtures import make_net
    from netvlad_port.model import SimpleNN

    torch.set_num_threads(torch.get_num_threads())
    spec = make_net(**spec_args)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    paths = sorted(Path(folder).glob("*.jpg"))
    if kind == "ours":
        from netvlad_port.extract import serial_all_feats

        model = SimpleNN(spec).eval()
        warm = Path(folder) / "warm.list"
        warm.write_text(paths[0].name + "\n")
        serial_all_feats(
            model, warm, Path(folder) / "warm.npy", progress=False, device=device, precision=precision, num_workers=0
        )
        start = time.perf_counter()
        serial_all_feats(
            model,
            folder,
            Path(folder) / f"out_{batch}_{precision}.npy",
            batch_size=batch,
            device=device,
            precision=precision,
            progress=False,
        )
        seconds = time.perf_counter() - start
    else:
        from PIL import Image

        model = baseline_model(spec).to(dev)
        mean = torch.tensor([123.68, 116.779, 103.939]).view(1, 3, 1, 1).to(dev)
        with torch.no_grad():
            model(torch.zeros(1, 3, 64, 64, device=dev))
            start = time.perf_counter()
            for p in paths:
                x = torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32)).permute(2, 0, 1)[None]
                model(x.to(dev) - mean).cpu()
            seconds = time.perf_counter() - start
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else 0.0
    q.put((len(paths) / seconds, _peak_rss_mb(), cuda_peak))


def measure(*args):
    return in_fresh_process(_run, *args)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", default="480x640")
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--width", type=float, default=1.0, help="channel scale (1 = real VGG16)")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    spec_args = {"arch": "vd16", "method": "vlad_preL2_intra", "width": args.width, "k": 64, "pca_dim": 4096, "seed": 0}
    print(
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.images} images {h}x{w}, VGG16 width {args.width} + NetVLAD K=64 + WPCA 4096"
    )
    with tempfile.TemporaryDirectory() as folder:
        make_images(Path(folder), args.images, h, w)
        base = measure("baseline", folder, spec_args, 1, "fp32", args.device)
        rows = [("baseline (Sequential, per-image loop)", 1, "fp32", *base)]
        for precision in args.precisions.split(","):
            for b in (int(v) for v in args.batch_sizes.split(",")):
                rows.append(
                    (
                        "netvlad-port extract",
                        b,
                        precision,
                        *measure("ours", folder, spec_args, b, precision, args.device),
                    )
                )
    print(f"| {'what':<38} | batch | precision | images/s | x baseline | peak RSS MB | CUDA peak MB |")
    print(f"|{'-' * 40}|-------|-----------|----------|------------|-------------|--------------|")
    for name, b, prec, ips, rss, cuda in rows:
        print(
            f"| {name:<38} | {b:>5} | {prec:>9} | {ips:>8.2f} | {ips / base[0]:>10.2f} | {rss:>11.0f} | {cuda:>12.0f} |"
        )


if __name__ == "__main__":
    main()
