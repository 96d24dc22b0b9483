"""NetVLAD's custom layers (MATLAB classes): ``layerVLAD``, ``layerVLADv2``, ``layerWholeL2Normalize``,
``layerTotalMaxPool``, ``layerTotalAvgPool``, and how ``addLayers`` initialises them.

A VLAD output (MATLAB 1 x K x D x N) is N x D x 1 x K here, so ``vlad:intranorm`` is the same
channel-wise normalize layer and the MATLAB flatten gives the K-fastest order
([docs/matlab.md#vlad-layout](../../docs/matlab.md#vlad-layout)).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import NetFormatError
from ..matconvnet import mat
from ..matconvnet.spec import (
    TORCH_VLAD,
    TOTAL_AVG,
    TOTAL_MAX,
    VLAD,
    VLADV2,
    WHOLE_L2,
    LayerSpec,
    LayerType,
    Shape,
    register_layer,
)
from .base import MatLayer, in_fp32, matlab_flatten, param, to_numpy

# relja_l2normalize_col: x / (sqrt(sum x^2) + eps), eps outside the root.
WHOLE_L2_EPS = 1e-12
ALPHA_TARGET = -math.log(0.01)  # addLayers: alpha = -log(0.01) / mean(dot1 - dot2)


class VLADCore(MatLayer):
    """``layerVLAD``: a = softmax_K(W1^T x) (no bias), V_dk = sum_i a_ik (x_id + W2_dk) with W2 = -centres.
    ``layerVLADv2`` adds the bias W2 to the scores and uses W3 as offsets
    ([docs/matlab.md#layervlad](../../docs/matlab.md#layervlad)).
    Output N x D x 1 x K (MATLAB 1 x K x D x N); batched matrix products, no loop over clusters."""

    matlab_type = VLAD

    def __init__(self, spec: LayerSpec, in_channels: int = 0):
        super().__init__(spec)
        self.matlab_type = spec.type
        w = spec.weights
        self.assign = param(w[0][0, 0])  # D x K
        if spec.type == VLADV2:
            self.assign_bias = param(w[1].reshape(-1))  # K
            self.offsets = param(w[2][0, 0])  # D x K
        else:
            self.assign_bias = None
            self.offsets = param(w[1][0, 0])  # D x K, = -centres

    @property
    def K(self) -> int:
        return self.assign.shape[1]

    @property
    def D(self) -> int:
        return self.assign.shape[0]

    @in_fp32
    def forward(self, x):
        n, d = x.shape[:2]
        xf = x.reshape(n, d, -1)  # N x D x M
        scores = torch.einsum("dk,ndm->nkm", self.assign, xf)
        if self.assign_bias is not None:
            scores = scores + self.assign_bias[None, :, None]
        a = torch.softmax(scores, dim=1)  # N x K x M
        v = torch.bmm(xf, a.transpose(1, 2)) + self.offsets[None] * a.sum(2)[:, None, :]  # N x D x K
        return v[:, :, None, :]

    def weight_params(self):
        bias = [self.assign_bias] if self.assign_bias is not None else []
        return [self.assign] + bias + [self.offsets]

    def matlab_arrays(self, tensors):
        out = [to_numpy(tensors[0])[None, None]]  # D x K -> 1 x 1 x D x K
        if len(tensors) == 3:
            out.append(to_numpy(tensors[1])[None])  # K -> 1 x K
        return out + [to_numpy(tensors[-1])[None, None]]

    def params(self):
        return {"K": self.K, "D": self.D}


class WholeL2Normalize(MatLayer):
    """``layerWholeL2Normalize`` (postL2 / finalL2): the MATLAB-order flattened vector over
    (||x|| + 1e-12), as ``relja_l2normalize_col``; output N x numel x 1 x 1 (MATLAB 1 x 1 x numel x N).
    ``params["flavour"] == "pytorch"``: ``F.normalize``, x / max(||x||, 1e-12), as GCL's ``BaseNet``."""

    matlab_type = WHOLE_L2

    def __init__(self, spec: LayerSpec, in_channels: int = 0):
        super().__init__(spec)
        self.flavour = spec.params.get("flavour", "matlab")

    @in_fp32
    def forward(self, x):
        x = matlab_flatten(x)
        return (F.normalize(x, dim=1) if self.flavour == "pytorch" else l2_rows(x))[:, :, None, None]

    def params(self):
        return {"flavour": "pytorch"} if self.flavour == "pytorch" else {}


def l2_rows(x: torch.Tensor) -> torch.Tensor:
    """``relja_l2normalize_col`` on N x D rows: x / (||x|| + 1e-12), eps outside the root."""
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + WHOLE_L2_EPS)


def crop_to_dim(desc: torch.Tensor, dim: int | None) -> torch.Tensor:
    """``testFromFn``'s ``cropToDim``: the first ``dim`` components of N x D descriptors, L2 again
    as ``layerWholeL2Normalize`` does ([docs/matlab.md#addpca](../../docs/matlab.md#addpca)).
    ``dim`` None or >= D: the descriptors as they are."""
    if not dim or dim >= desc.shape[1]:
        return desc
    return l2_rows(desc[:, :dim])


class TotalMaxPool(MatLayer):
    """``layerTotalMaxPool`` ('max:core'): max over all H x W."""

    matlab_type = TOTAL_MAX

    def forward(self, x):
        return x.amax(dim=(2, 3), keepdim=True)


class TotalAvgPool(MatLayer):
    """``layerTotalAvgPool`` ('avg:core'): mean over all H x W."""

    matlab_type = TOTAL_AVG

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True)


class TorchNetVLAD(MatLayer):
    """The NetVLAD module of Nanne's pytorch-NetVlad and STML (``netvlad.py`` ``NetVLAD.forward``), whole:
    x̂ = F.normalize(x) over channels, a = softmax_K(conv1x1(x̂)) (bias with ``vladv2``),
    V_kd = sum_i a_ik (x̂_id - c_kd), F.normalize over d (intra), flattened **cluster-major** (k·D + d),
    F.normalize of the whole. F.normalize is x / max(||x||, 1e-12) at all three places
    ([docs/pytorch_models.md](../../docs/pytorch_models.md#netvlad-flavours)). Weights in torch layout:
    ``conv.weight`` K x D x 1 x 1, ``conv.bias`` K (vladv2 only), ``centroids`` K x D.
    Residuals are formed as the original does, (x̂ - c) * a summed over locations, a few clusters at a time."""

    matlab_type = TORCH_VLAD
    CHUNK = 8  # clusters per step: N x 8 x D x HW floats at a time

    def __init__(self, spec: LayerSpec, in_channels: int = 0):
        super().__init__(spec)
        w = spec.weights
        self.conv_weight = param(w[0])
        self.conv_bias = param(w[1]) if len(w) == 3 else None
        self.centroids = param(w[-1])
        self.normalize_input = bool(spec.params.get("normalize_input", True))

    @in_fp32
    def forward(self, x):
        x = F.normalize(x, p=2, dim=1) if self.normalize_input else x
        vlad = F.normalize(self.residual_sums(x, self.soft_assign(x)), p=2, dim=2)
        return F.normalize(vlad.reshape(x.shape[0], -1), p=2, dim=1)[:, :, None, None]

    def soft_assign(self, x: torch.Tensor) -> torch.Tensor:
        """N x K x HW (location index h·W + w) of the (normalised) input."""
        scores = F.conv2d(x, self.conv_weight, self.conv_bias)
        return F.softmax(scores.view(x.shape[0], self.centroids.shape[0], -1), dim=1)

    def residual_sums(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """V: N x K x D, sum over locations of a_k (x - c_k), before any normalisation."""
        xf = x.view(x.shape[0], x.shape[1], -1)
        blocks = []
        for k0 in range(0, self.centroids.shape[0], self.CHUNK):
            c = self.centroids[k0 : k0 + self.CHUNK]  # k' x D
            residual = xf[:, None] - c[None, :, :, None]  # N x k' x D x HW
            blocks.append((residual * a[:, k0 : k0 + self.CHUNK, None, :]).sum(dim=-1))
        return torch.cat(blocks, 1)

    def weight_params(self):
        return [self.conv_weight] + ([self.conv_bias] if self.conv_bias is not None else []) + [self.centroids]

    def matlab_arrays(self, tensors):
        return [to_numpy(t) for t in tensors]

    def params(self):
        k, d = self.centroids.shape
        return {"K": k, "D": d, **({} if self.normalize_input else {"normalize_input": False})}


# --- addLayers: initialisation from k-means centres ---------------------------------------------
def l2_cols(a: np.ndarray) -> np.ndarray:
    """``relja_l2normalize_col``: columns over (norm + 1e-12)."""
    return a / (np.sqrt((a.astype(np.float64) ** 2).sum(0)) + WHOLE_L2_EPS).astype(a.dtype)


def vlad_alpha(clusters: np.ndarray, train_descs: np.ndarray) -> float:
    """addLayers' alpha for ``layerVLAD``: -log(0.01) / mean(top1 - top2 dot with the L2-normalised
    centres), over the training descriptors (D x N)."""
    dots = l2_cols(clusters).T.astype(np.float64) @ train_descs.astype(np.float64)  # K x N
    top2 = -np.partition(-dots, 1, axis=0)[:2]
    return float(ALPHA_TARGET / np.mean(top2[0] - top2[1]))


def vladv2_alpha(clusters: np.ndarray, train_descs: np.ndarray) -> float:
    """addLayers' alpha for ``layerVLADv2``: -log(0.01) / mean(d2^2 - d1^2) to the two nearest centres."""
    c, x = clusters.astype(np.float64), train_descs.astype(np.float64)
    d2 = (x**2).sum(0)[None] - 2 * c.T @ x + (c**2).sum(0)[:, None]
    near = np.partition(d2, 1, axis=0)[:2]
    return float(ALPHA_TARGET / np.mean(near[1] - near[0]))


def vlad_layer(d: int, clusters: np.ndarray, alpha: float) -> LayerSpec:
    """``layerVLAD('vlad:core')`` from centres C (D x K): weights {alpha * C/|C|, -C}."""
    w = [alpha * l2_cols(clusters), -clusters]
    return LayerSpec(
        VLAD, "vlad:core", [np.asarray(x, np.float32)[None, None] for x in w], {"K": clusters.shape[1], "D": d}
    )


def vladv2_layer(d: int, clusters: np.ndarray, alpha: float) -> LayerSpec:
    """``layerVLADv2('vlad:core')``: weights {2 alpha C, -alpha |c_k|^2, -C}."""
    c = clusters
    w = [(alpha * 2 * c)[None, None], (-alpha * (c.astype(np.float64) ** 2).sum(0))[None], (-c)[None, None]]
    return LayerSpec(VLADV2, "vlad:core", [np.asarray(x, np.float32) for x in w], {"K": c.shape[1], "D": d})


# --- MAT fields, shapes -----------------------------------------------------------------------------
def _vlad_canonical(layer: LayerSpec, where: str, previous: LayerSpec | None) -> None:
    """K and D follow from the weights; restore 1 x 1 x D x K (and 1 x K) from squeezed arrays."""
    w = layer.weights
    a = np.asarray(w[0])
    if a.ndim == 2:  # squeezed D x K
        d, k = a.shape
    elif a.ndim == 4:
        d, k = a.shape[2], a.shape[3]
    else:
        raise NetFormatError(f"{where}: VLAD weights{{1}} has shape {a.shape}; expected 1x1xDxK or DxK")
    layer.params["D"], layer.params["K"] = int(d), int(k)
    offsets = 1 if layer.type == VLAD else 2
    for j in (0, offsets):
        if np.asarray(w[j]).size != d * k:
            raise NetFormatError(
                f"{where}: weights{{{j + 1}}} has {np.asarray(w[j]).size} values; expected D*K = {d}*{k}"
            )
        w[j] = np.asarray(w[j]).reshape(1, 1, d, k, order="F")
    if layer.type == VLADV2:
        if np.asarray(w[1]).size != k:
            raise NetFormatError(
                f"{where}: layerVLADv2 weights{{2}} has {np.asarray(w[1]).size} values; expected K = {k}"
            )
        w[1] = np.asarray(w[1]).reshape(1, k)


def _vlad_shape(layer: LayerSpec, shape: Shape, where: str) -> Shape:
    d, k = layer.params["D"], layer.params["K"]
    if d != shape[2]:
        raise NetFormatError(f"{where}: VLAD expects D = {d} input channels but the previous layer gives {shape[2]}")
    return 1, k, d


def _vlad_read(fields: dict, where: str) -> dict:
    if not fields.get("weights"):
        raise NetFormatError(
            f"{where}: {fields.get('__class__') or VLAD} has no weights. The file was probably re-saved by MATLAB "
            f"without the NetVLAD classes on the path (netvlad issue #6); use the original release file or a "
            f"struct-ified copy"
        )
    return {}  # K, D and vladDim follow from the weights


def _vlad_fields(layer: LayerSpec) -> dict:
    d, k = layer.params["D"], layer.params["K"]
    return {
        "type": mat.string("custom"),
        "name": mat.string(layer.name),
        "K": mat.num(k),
        "D": mat.num(d),
        "vladDim": mat.num(d * k),
        "weights": mat.weights_cell(layer.weights),
        "momentum": mat.empty(),
        "learningRate": mat.empty(),
        "weightDecay": mat.empty(),
        "precious": mat.false(),
    }


def _custom_fields(layer: LayerSpec) -> dict:
    if layer.params.get("flavour", "matlab") != "matlab":
        raise NetFormatError(f"layer '{layer.name}' ({layer.type}) normalises as PyTorch does (F.normalize): "
                             f"MATLAB's layerWholeL2Normalize cannot hold it")  # fmt: skip
    return {"type": mat.string("custom"), "name": mat.string(layer.name), "precious": mat.false()}


def _n_weights(fields: dict) -> int:
    w = fields.get("weights")
    return len(w) if isinstance(w, list) else 0


def _whole_l2_canonical(layer: LayerSpec, where: str, previous) -> None:
    if layer.params.get("flavour", "matlab") not in ("matlab", "pytorch"):
        raise NetFormatError(f"{where}: flavour must be matlab or pytorch, got {layer.params.get('flavour')!r}")


def _torch_vlad_canonical(layer: LayerSpec, where: str, previous) -> None:
    w = [np.asarray(x, np.float32) for x in layer.weights]
    cent = w[-1]
    if cent.ndim != 2:
        raise NetFormatError(f"{where}: centroids have shape {cent.shape}; expected K x D")
    k, d = cent.shape
    if w[0].size != k * d:
        raise NetFormatError(f"{where}: conv.weight has shape {w[0].shape}; expected {k} x {d} x 1 x 1")
    w[0] = w[0].reshape(k, d, 1, 1)
    if len(w) == 3:
        if w[1].size != k:
            raise NetFormatError(f"{where}: conv.bias has shape {w[1].shape}; expected {k}")
        w[1] = w[1].reshape(k)
    layer.weights = w
    layer.params["K"], layer.params["D"] = int(k), int(d)


def _whole_l2_shape(layer: LayerSpec, shape: Shape, where: str) -> Shape:
    h, w, c = shape
    return (1, 1, h * w * c) if h is not None else shape


register_layer(LayerType(
    VLAD, VLADCore, n_weights=(2,), custom=True, canonical=_vlad_canonical, shape=_vlad_shape, read=_vlad_read,
    fields=_vlad_fields, token="vlad", aggregate=vlad_layer, alpha=vlad_alpha,
    recognise=lambda f: _n_weights(f) == 2 or (f.get("name") == "vlad:core" and _n_weights(f) != 3),
))  # fmt: skip
register_layer(LayerType(
    VLADV2, VLADCore, n_weights=(3,), custom=True, canonical=_vlad_canonical, shape=_vlad_shape, read=_vlad_read,
    fields=_vlad_fields, token="vladv2", aggregate=vladv2_layer, alpha=vladv2_alpha,
    recognise=lambda f: _n_weights(f) == 3,
))  # fmt: skip
register_layer(LayerType(
    TORCH_VLAD, TorchNetVLAD, n_weights=(2, 3), canonical=_torch_vlad_canonical,
    shape=lambda l, s, w: (1, 1, _vlad_shape(l, s, w)[1] * l.params["D"]),
))  # fmt: skip
register_layer(LayerType(
    WHOLE_L2, WholeL2Normalize, custom=True, canonical=_whole_l2_canonical, shape=_whole_l2_shape,
    fields=_custom_fields,
    recognise=lambda f: str(f.get("name", "")).endswith("L2"),
))  # fmt: skip
for _type, _module, _token in ((TOTAL_MAX, TotalMaxPool, "max"), (TOTAL_AVG, TotalAvgPool, "avg")):
    register_layer(LayerType(
        _type, _module, custom=True, shape=lambda l, s, w: (1, 1, s[2]), fields=_custom_fields, token=_token,
        aggregate=lambda d, clusters, alpha, t=_type, n=f"{_token}:core": LayerSpec(t, n),
        recognise=lambda f, n=f"{_token}:core": f.get("name") == n,
    ))  # fmt: skip
