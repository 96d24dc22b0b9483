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

N_TRAIN, N_PER_IMAGE, SEED, N_ITER = 50_000, 100, 43, 100


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
) -> np.ndarray:
    """D x N local descriptors of the network's output, sampled as ``getClusters`` does:
    ``rng(43)``, ``randsample(numImages, nIm)``, then ``randsample(H*W, nThis)`` per image
    (``rng="matlab"``: MATLAB's draws; ``"numpy"``: numpy's)."""
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
            descs = y.permute(0, 2, 1).reshape(y.shape[0], -1).float().cpu().numpy()  # D x (H W), h fastest
            n_this = min(n_per_image, descs.shape[1], n_train - total)
            chunks.append(descs[:, draws.randsample(descs.shape[1], n_this) - 1])
            total += n_this
    return np.concatenate(chunks, 1).astype(np.float32)


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

    which = descriptor_name(spec)
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
