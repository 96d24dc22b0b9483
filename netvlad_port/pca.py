"""PCA whitening: MATLAB ``addPCA`` and ``relja_PCA`` ([docs/matlab.md#addpca](../docs/matlab.md#addpca)).

Features are the current network's output (32768-D postL2 for NetVLAD) of at most ``n_train_cap``
training-database images (a seeded random subset when there are more), written straight into one
preallocated N x D float32 array that is centred in place (10,000 x 32,768 is 1.3 GB; no second
copy). Dual PCA when D > N (the Gram matrix in float32, then float64, as ``relja_PCA``), primal
otherwise; whitening ``U diag(1 / sqrt(lambda + 1e-9))``, bias ``-U_w' mu``, then ``finalL2``.
Eigenvector signs are arbitrary in MATLAB (ARPACK); here each is flipped so that its entry of
largest magnitude is positive.
"""

from __future__ import annotations

import numpy as np

from .errors import NetVladPortError
from .matconvnet.spec import CONV, WHOLE_L2, LayerSpec, NetSpec, ensure_validated, output_dim, validate
from .matlab_random import make_rng

WHITEN_EPS = 1e-9
SEED = 43
N_TRAIN_CAP = 10_000  # addPCA's nTrainCap


def relja_pca(x: np.ndarray, n_pcs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``relja_PCA`` on N x D rows ``x`` (float32, **centred in place**): (U D x P, lambdas P, mu D, U' mu)."""
    from scipy.linalg import eigh

    n, d = x.shape
    mu = x.mean(0, dtype=np.float64).astype(np.float32)
    x -= mu
    dual = d > n
    gram = (x @ x.T) if dual else (x.T @ x)  # float32, as MATLAB computes x'*x / x*x' in single
    gram = gram.astype(np.float64) / (n - 1)
    m = gram.shape[0]
    p = min(n_pcs, m)
    lams, v = eigh(gram, subset_by_index=[m - p, m - 1]) if p < m else eigh(gram)
    order = np.argsort(lams)[::-1]
    lams, v = lams[order], v[:, order]
    if dual:
        scale = (1 / np.sqrt(np.maximum(lams, 1e-9)) / np.sqrt(n - 1)).astype(np.float32)
        u = x.T @ (v.astype(np.float32) * scale)  # D x P, float32, no copy of x
    else:
        u = v.astype(np.float32)
    flip = np.sign(u[np.abs(u).argmax(0), np.arange(u.shape[1])])
    u *= flip.astype(np.float32)
    return u, lams, mu, u.T @ mu


def pca_features(
    spec: NetSpec,
    db_train,
    n_train_cap: int = N_TRAIN_CAP,
    batch_size: int = 10,
    device: str = "cpu",
    seed: int = SEED,
    rng: str = "matlab",
    progress: bool = True,
    num_workers: int | None = None,
) -> np.ndarray:
    """N x D output of the network for the training database (at most ``n_train_cap`` images)."""
    from .extract import iter_descriptors, plan_batches
    from .model import SimpleNN

    spec = ensure_validated(spec)  # canonical, for _output_dim; SimpleNN does not check it again
    model = SimpleNN(spec).eval()
    ids = np.arange(db_train.num_images)
    if len(ids) > n_train_cap:
        ids = make_rng(rng, seed).randsample(len(ids), n_train_cap) - 1  # rng(43); randsample, in its order
    names = [db_train.db_image_fns[i] for i in ids]
    feats = np.empty((len(names), _output_dim(spec)), np.float32)

    def fail(i, msg):
        raise NetVladPortError(msg)

    batches, _ = plan_batches(db_train.db_path, names, range(len(names)), batch_size, None, fail)
    for rows, desc in iter_descriptors(
        model, db_train.db_path, names, batches, fail, device=device, progress=progress, num_workers=num_workers
    ):
        feats[rows] = desc
    return feats


def check_unwhitened(spec: NetSpec, again: bool = False) -> None:
    """Refuse a second (W)PCA on top of one, unless asked (``again``, ``pca --again``)."""
    done = [layer.name for layer in spec.layers if layer.name in ("WPCA", "PCA")]
    if done and not again:
        raise NetVladPortError(f"the network already ends in {done[-1]} (addPCA was applied); start from the network "
                               f"before it, or pass --again to add another")  # fmt: skip


def check_pca_dim(pca_dim: int, d: int, n: int) -> None:
    """Refuse a pcaDim the data cannot give: not below the descriptor dimension ``d``, or above the ``n``
    training images (PCA of n points has at most n directions; MATLAB would return fewer, silently)."""
    if pca_dim >= d:
        raise NetVladPortError(f"pcaDim {pca_dim} must be smaller than the descriptor dimension {d}")
    if pca_dim > n:
        raise NetVladPortError(f"pcaDim {pca_dim}: PCA of {n} training images has at most {n} dimensions; "
                               f"use --pca-dim {n} or less, or more images")  # fmt: skip


def _output_dim(spec: NetSpec) -> int:
    """The descriptor dimension, which addPCA needs independent of the image size."""
    dim = output_dim(spec)
    if dim is None:
        raise NetVladPortError("addPCA needs a network whose output size does not depend on the image size")
    return dim


def add_pca(
    spec: NetSpec,
    db_train=None,
    pca_dim: int = 4096,
    do_white: bool = True,
    n_train_cap: int = N_TRAIN_CAP,
    features: np.ndarray | None = None,
    again: bool = False,
    **feature_kwargs,
) -> NetSpec:
    """MATLAB ``addPCA(net, dbTrain, 'pcaDim', 4096, 'doWhite', true)``: appends WPCA (or PCA) and
    finalL2. ``features`` (N x D, consumed: centred in place) skips the extraction. A network that has
    a (W)PCA already is refused unless ``again`` (MATLAB would append a second one)."""
    if features is None:
        if db_train is None:
            raise NetVladPortError("add_pca needs db_train or features")
        check_pca_dim(pca_dim, _output_dim(spec), min(db_train.num_images, n_train_cap))  # before extracting
        check_unwhitened(spec, again)
        features = pca_features(spec, db_train, n_train_cap=n_train_cap, **feature_kwargs)
    n, d = features.shape
    check_pca_dim(pca_dim, d, n)
    check_unwhitened(spec, again)
    u, lams, mu, _ = relja_pca(features, pca_dim)
    u, lams = u[:, :pca_dim], lams[:pca_dim]
    if do_white:
        u = u * (1 / np.sqrt(lams + WHITEN_EPS)).astype(np.float32)
    name = "WPCA" if do_white else "PCA"
    layers = list(spec.layers) + [
        LayerSpec(
            CONV,
            name,
            [u[None, None].astype(np.float32), -(u.T @ mu).astype(np.float32)],
            {"pad": 0, "stride": 1, "dilate": 1},
        ),
        LayerSpec(WHOLE_L2, "finalL2"),
    ]
    meta = dict(spec.meta)
    meta["sessionID"] = f"{meta.get('sessionID', '')}_{name}"
    return validate(NetSpec(layers, meta))


def gcl_whitening(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """GCL ``apply_pca.py`` ``pcawhitenlearn`` (52-71) on N x D rows ``x``, in float64: mean m, covariance
    Xc'Xc / N (symmetrised), eigenvalues descending, P = diag(lambda^-1/2) E' with no epsilon; returns (m, the
    first ``dim`` rows of P), which ``whitenapply`` (41-49) uses as y = P (x - m), then y / (||y|| + 1e-6).
    When D > N the same eigenvectors come from the N x N Gram matrix. Each eigenvector's sign is set so that
    its entry of largest magnitude is positive (``eig``'s sign is arbitrary; distances do not depend on it)."""
    from scipy.linalg import eigh

    x = np.asarray(x, np.float64)
    n, d = x.shape
    if not 1 <= dim <= d:
        raise NetVladPortError(f"--pca-dim {dim}: must be between 1 and the descriptor dimension {d}")
    m = x.mean(0)
    xc = x - m
    dual = d > n
    gram = xc @ xc.T if dual else xc.T @ xc
    gram = (gram + gram.T) / (2 * n)
    size = gram.shape[0]
    p = min(dim, size)
    lams, v = eigh(gram, subset_by_index=[size - p, size - 1])
    lams, v = lams[::-1], v[:, ::-1]
    rank = int((lams > lams[0] * max(n, d) * np.finfo(np.float64).eps).sum()) if lams[0] > 0 else 0
    if p < dim or rank < dim:
        r = min(rank, p)
        raise NetVladPortError(f"--pca-dim {dim}: the {n} database descriptors span only {r} dimensions (GCL's "
                               f"whitening divides by each eigenvalue); use --pca-dim {r} or less")  # fmt: skip
    e = xc.T @ v / np.sqrt(n * lams) if dual else v  # D x dim, unit columns
    e = e * np.sign(e[np.abs(e).argmax(0), np.arange(dim)])
    return m, e.T / np.sqrt(lams)[:, None]


def add_gcl_whitening(spec: NetSpec, db, pca_dim: int, fit_label: str, again: bool = False,
                      features: np.ndarray | None = None, **feature_kwargs) -> NetSpec:  # fmt: skip
    """GCL's whitening fitted on ``db``'s database (every image, GCL ``apply_pca.py:183-191``): appends WPCA
    (weights P', bias -P m of :func:`gcl_whitening`) and finalL2; ``meta["pca_fit"]`` records ``fit_label``
    (``database:<dataset>``). ``features`` (N x D) skips the extraction."""
    check_unwhitened(spec, again)
    if features is None:
        dim = _output_dim(spec)
        if pca_dim > dim:
            raise NetVladPortError(f"--pca-dim {pca_dim}: must be between 1 and the descriptor dimension {dim}")
        features = pca_features(spec, db, n_train_cap=db.num_images, **feature_kwargs)
    m, p = gcl_whitening(features, pca_dim)
    layers = list(spec.layers) + [
        LayerSpec(
            CONV,
            "WPCA",
            [p.T[None, None].astype(np.float32), (-(p @ m)).astype(np.float32)],
            {"pad": 0, "stride": 1, "dilate": 1},
        ),  # fmt: skip
        LayerSpec(WHOLE_L2, "finalL2"),
    ]
    meta = dict(spec.meta)
    meta["sessionID"] = f"{meta.get('sessionID', '')}_WPCA"
    meta["pca_fit"] = fit_label
    return validate(NetSpec(layers, meta))
