"""VLAD initialisation: MATLAB ``getClusters`` ([docs/matlab.md#getclusters](../docs/matlab.md#getclusters)).

50,000 descriptors of the network's current output (conv5_3 after ``preL2``), 100 per image
from ``ceil(50000/100) = 500`` database images -- the **first 500 in file order**, as the original
code really does (it draws ``trainIDs`` and never uses them); ``first_images=False`` uses the
random sample it intended. The draws are MATLAB's, call for call: ``rng(43)``, ``randsample`` of
the images, then ``randsample`` of each image's positions (``rng="numpy"``: the same calls on
numpy's generator). k-means is faiss (100 iterations, seed 43, all points), not ``yael_kmeans``:
the centres differ from MATLAB's. Results are cached under MATLAB's file names
(``<db>_<netID>_<layer>[_preL2]_traindescs.mat``, ``..._k064_clst.mat``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .devices import resolve_device
from .errors import NetVladPortError
from .images import read_image
from .io_utils import atomic_file
from .matconvnet.spec import NetSpec
from .matlab_random import make_rng
from .registry import Registry

N_TRAIN, N_PER_IMAGE, SEED, N_ITER = 50_000, 100, 43, 100
# cluster --keep-masks: kind -> (source, db, rejected categories) -> keep(image) -> H x W mask (plug-ins: the sTML
# wing registers its guidance sources as "guidance")
MASK_SOURCES: Registry = Registry("keep-mask source", builtins="netvlad_port.clusters")
# cluster --original: the start networks of Nanne's and STML's training (docs/stml.md#training-and-the-demo):
# trainable from conv5_1 (Nanne main.py:395-399) / conv3_1 (STML get_model.py:77-82); STML resizes to 640x480
# (dataloaders/pittsburgh.py:37-38, PIL's default filter)
ORIGINAL_STARTS = {
    "nanne": {"split": "conv5_1", "resize": None},
    "stml": {"split": "conv3_1", "resize": {"mode": "fixed", "size": [480, 640], "filter": "bicubic"}},
}


def descriptor_name(spec: NetSpec) -> str:
    """MATLAB's ``whichDesc``: ``<netID>_<layerName>[_preL2]``."""
    names = [l.name for l in spec.layers]
    pre = names[-1] == "preL2"
    layer = names[-2] if pre and len(names) > 1 else names[-1]
    return f"{spec.meta.get('netID', 'net')}_{layer}{'_preL2' if pre else ''}"


def sample_train_descs(
    spec: NetSpec,
    db_train,
    n_train: int = N_TRAIN,
    n_per_image: int = N_PER_IMAGE,
    first_images: bool = True,
    seed: int = SEED,
    device: str = "cpu",
    progress: bool = True,
    rng: str = "matlab",
    keep=None,
) -> np.ndarray:
    """D x N local descriptors of the network's output, sampled as ``getClusters`` does:
    ``rng(43)``, ``randsample(numImages, nIm)``, then ``randsample(H*W, nThis)`` per image
    (``rng="matlab"``: MATLAB's draws; ``"numpy"``: numpy's). ``keep(image) -> H0 x W0 mask``: STML's
    re-clustering (:func:`masked_positions`)."""
    from tqdm import tqdm

    from .model import SimpleNN

    device = resolve_device(device)
    model = SimpleNN(spec).eval().to(device)
    draws = make_rng(rng, seed)
    n_im = min(math.ceil(n_train / n_per_image), db_train.num_images)
    drawn = draws.randsample(db_train.num_images, n_im) - 1  # the original code does not use them
    ids = range(n_im) if first_images else drawn
    chunks, total = [], 0
    with torch.inference_mode():
        for i in tqdm(ids, desc="train descriptors", unit="img", disable=not progress):
            if total >= n_train:
                break
            x = read_image(db_train.db_image(int(i)), getattr(model, "resize", None))[None].to(device)
            y = model.run(model.prepare(model.from_rgb255(x)))[0]  # D x H x W
            n_this = min(n_per_image, y.shape[1] * y.shape[2], n_train - total)
            if keep is None:
                descs = y.permute(0, 2, 1).reshape(y.shape[0], -1).float().cpu().numpy()  # D x (H W), h fastest
                chunks.append(descs[:, draws.randsample(descs.shape[1], n_this) - 1])
            else:
                at = masked_positions(keep(db_train.db_image(int(i))), x.shape[2:], y.shape[1:], n_this, draws)
                chunks.append(y.reshape(y.shape[0], -1)[:, at].float().cpu().numpy())
                n_this = len(at)
            total += n_this
    return np.concatenate(chunks, 1).astype(np.float32)


def masked_positions(mask: np.ndarray, in_hw, map_hw, n: int, draws) -> np.ndarray:
    """STML's re-clustering (``tasks/get_clusters.py:50-88, 124-126``): ``2n`` map positions (row-major,
    w fastest) drawn without replacement, those whose cell's top-left input pixel (Y, X) = (⌊y H/h⌋, ⌊x W/w⌋)
    has mask < 0.5 dropped, the first ``n`` kept (fewer when fewer survive; the original then fails). The
    mask is read at its own resolution (nearest pixel to (Y, X))."""
    (big_h, big_w), (h, w) = (int(v) for v in in_hw), (int(v) for v in map_hw)
    sample = draws.randsample(h * w, min(2 * n, h * w)) - 1
    ys, xs = sample // w, sample % w
    rows = (ys * (big_h / h)).astype(np.int64) * mask.shape[0] // big_h
    cols = (xs * (big_w / w)).astype(np.int64) * mask.shape[1] // big_w
    return sample[mask[rows, cols] >= 0.5][:n]


def nanne_netvlad(spec: NetSpec, db_train, k: int = 64, cache_dir=None, say=None, **sample_kwargs) -> NetSpec:
    """The network with Nanne's NetVLAD (layer type ``netvlad``) appended: clusters of its L2-normalised output
    (Nanne ``main.py:401-402``: an L2Norm is appended for clustering) by :func:`get_clusters`, then
    ``NetVLAD.init_params`` (``netvlad.py:35-46``): alpha = -log(0.01) / mean(top-1 - top-2 dot product of
    the training descriptors with the normalised centres), ``conv.weight`` = alpha c/‖c‖, no bias."""
    from .layers.netvlad import TORCH_VLAD
    from .matconvnet.spec import NORMALIZE, LayerSpec, infer_shapes, validate

    d = infer_shapes(spec, image_hw=None)[-1][2]
    pre = NetSpec(list(spec.layers) + [LayerSpec(NORMALIZE, "preL2", [], {"param": [2 * d, 1e-12, 1, 0.5]})],
                  dict(spec.meta))  # fmt: skip
    clusters, descs = get_clusters(pre, db_train, k=k, cache_dir=cache_dir, say=say, **sample_kwargs)
    assign = (clusters / np.linalg.norm(clusters, axis=0, keepdims=True)).T  # K x D
    dots = -np.sort(-(assign.astype(np.float64) @ descs), axis=0)
    alpha = float(-np.log(0.01) / np.mean(dots[0] - dots[1]))
    pool = LayerSpec(TORCH_VLAD, "pool", [(alpha * assign).astype(np.float32)[:, :, None, None],
                                          np.ascontiguousarray(clusters.T, np.float32)])  # fmt: skip
    meta = {**spec.meta, "sessionID": f"{spec.meta.get('sessionID', 'net')}_{db_train.name}_netvlad", "epoch": 0}
    return validate(NetSpec(list(spec.layers) + [pool], meta))


def kmeans(train_descs: np.ndarray, k: int, niter: int = N_ITER, seed: int = SEED) -> np.ndarray:
    """D x K centres (not normalised) of D x N descriptors; faiss on all points."""
    import faiss

    x = np.ascontiguousarray(train_descs.T, np.float32)
    if len(x) < k:
        raise NetVladPortError(f"k-means: {len(x)} descriptors for {k} clusters")
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False, max_points_per_centroid=len(x))
    km.train(x)
    return np.ascontiguousarray(km.centroids.T, np.float32)


def get_clusters(
    spec: NetSpec, db_train, k: int = 64, cache_dir: str | os.PathLike | None = None, say=None, **sample_kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``getClusters``: (centres D x K, training descriptors D x N), cached in ``cache_dir``;
    ``say(line)`` is told when a cached file is reused, naming it."""
    import scipy.io

    which = descriptor_name(spec) + ("_masked" if sample_kwargs.get("keep") is not None else "")  # re-clustering
    if any(c in which + db_train.name for c in "/\\") or ".." in which + db_train.name:
        raise NetVladPortError(
            f"cache file name {db_train.name}_{which}: the dataset name, meta.netID or the last layer's name holds "
            f"a path; cache files stay in --cache-dir"
        )
    desc_fn = clst_fn = None
    if cache_dir:
        cache_dir = Path(cache_dir)
        desc_fn = cache_dir / f"{db_train.name}_{which}_traindescs.mat"
        clst_fn = cache_dir / f"{db_train.name}_{which}_k{k:03d}_clst.mat"
    if desc_fn is not None and desc_fn.is_file():
        train_descs = scipy.io.loadmat(desc_fn)["trainDescs"].astype(np.float32)
        if say:
            say(f"reusing the cached training descriptors {desc_fn} (delete it to sample again)")
    else:
        train_descs = sample_train_descs(spec, db_train, **sample_kwargs)
        if desc_fn is not None:
            with atomic_file(desc_fn) as tmp:
                scipy.io.savemat(tmp, {"trainDescs": train_descs})
    if clst_fn is not None and clst_fn.is_file():
        clusters = scipy.io.loadmat(clst_fn)["clsts"].astype(np.float32)
        if clusters.shape[1] != k:
            raise NetVladPortError(f"{clst_fn}: holds {clusters.shape[1]} clusters, not {k}")
        if say:
            say(f"reusing the cached clusters {clst_fn} (delete it to cluster again)")
    else:
        clusters = kmeans(train_descs, k)
        if clst_fn is not None:
            with atomic_file(clst_fn) as tmp:
                scipy.io.savemat(tmp, {"clsts": clusters})
    return clusters, train_descs
