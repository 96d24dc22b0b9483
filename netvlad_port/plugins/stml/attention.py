"""Attention between the encoder and NetVLAD: STML's semantic-guided de-attention and the baselines
of its table, CRN, SE, BAM and CBAM ([docs/stml.md](../../../docs/stml.md#modules)), from
deepguider/deattention_with_stml_for_vpr ``networks/`` (``deattention_model.py``, ``senet.py``,
``bam.py``, ``cbam.py``).

Each is a layer type holding a small torch block (``layers/torch_block.py``: weights are its
``state_dict`` tensors; ``export-mat`` refuses them; a new block starts from PyTorch's default
initialisation drawn from a fixed seed, as the original's).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import NetFormatError
from ...layers.torch_block import BUILDERS, TorchBlockLayer
from ...matconvnet.spec import LayerSpec, LayerType, register_layer
from ...networks import register_attention

DEATT_BRANCHES = (32, 32, 20)  # deattention_model.py:135-138 (version 3: 32, 32, 32)
REDUCTION = 16  # SE, BAM, CBAM (senet.py:5, bam.py:11, cbam.py:35)
BAM_DILATION = 4  # bam.py:30


class _Branches(nn.Module):
    """Conv 3x3 / 5x5 / 7x7 -> ReLU -> BN each, concatenated, then Conv 1x1 -> ReLU -> BN(1) -> sigmoid:
    the mask of the de-attention and CRN modules (``deattention_model.py:124-183``)."""

    def __init__(self, c: int, widths=DEATT_BRANCHES, padding_mode: str = "reflect"):
        super().__init__()

        def branch(k, w):
            return nn.Sequential(nn.Conv2d(c, w, k, padding=k // 2, padding_mode=padding_mode), nn.ReLU(),
                                 nn.BatchNorm2d(w))  # fmt: skip

        self.g1, self.g2, self.g3 = (branch(k, w) for k, w in zip((3, 5, 7), widths))
        self.w = nn.Sequential(nn.Conv2d(sum(widths), 1, 1), nn.ReLU(), nn.BatchNorm2d(1))

    def forward(self, x_hat):
        return torch.sigmoid(self.w(torch.cat([self.g1(x_hat), self.g2(x_hat), self.g3(x_hat)], 1)))


class DeAttentionBlock(nn.Module):
    """Semantic-guided de-attention: the mask m = ``self.mask(x̂)`` from the channel-L2-normalised input
    x̂, then x·m (v1) or x + x·m (v2) of the raw input. The guidance reads m with a forward hook on
    ``mask``."""

    def __init__(self, c: int, version: int = 1, padding_mode: str = "reflect"):
        super().__init__()
        self.version = version
        self.mask = _Branches(c, (32, 32, 32) if version == 3 else DEATT_BRANCHES, padding_mode)

    def forward(self, x):
        m = self.mask(F.normalize(x, p=2, dim=1))
        return x + x * m if self.version == 2 else x * m


class CRNBlock(nn.Module):
    """STML's contextual reweighting: the same mask, output x̂·m (``deattention_model.py:113-122``)."""

    def __init__(self, c: int, padding_mode: str = "reflect"):
        super().__init__()
        self.mask = _Branches(c, DEATT_BRANCHES, padding_mode)

    def forward(self, x):
        x_hat = F.normalize(x, p=2, dim=1)
        return x_hat * self.mask(x_hat)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: GAP -> FC c->c/16 -> ReLU -> FC -> sigmoid, no biases (``senet.py``)."""

    def __init__(self, c: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c, c // REDUCTION, bias=False), nn.ReLU(),
                                nn.Linear(c // REDUCTION, c, bias=False), nn.Sigmoid())  # fmt: skip

    def forward(self, x):
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class BAMBlock(nn.Module):
    """BAM (``bam.py``): (1 + sigmoid(channel gate · spatial gate)) · x. The channel gate average-pools
    with kernel = stride = H, which on a wider-than-tall map reads only the left H x H window, as the
    original does."""

    def __init__(self, c: int):
        super().__init__()
        r = c // REDUCTION
        self.channel = nn.Sequential(nn.Linear(c, r), nn.BatchNorm1d(r), nn.ReLU(), nn.Linear(r, c))
        layers = [nn.Conv2d(c, r, 1), nn.BatchNorm2d(r), nn.ReLU()]
        for _ in range(2):
            layers += [nn.Conv2d(r, r, 3, padding=BAM_DILATION, dilation=BAM_DILATION), nn.BatchNorm2d(r), nn.ReLU()]
        self.spatial = nn.Sequential(*layers, nn.Conv2d(r, 1, 1))

    def forward(self, x):
        h = x.shape[2]
        pooled = F.avg_pool2d(x, h, stride=h).flatten(1)
        return (1 + torch.sigmoid(self.channel(pooled)[:, :, None, None] * self.spatial(x))) * x


class CBAMBlock(nn.Module):
    """CBAM (``cbam.py``): a shared MLP on the average- and max-pooled vectors gates the channels, then
    [max_c, mean_c] -> 7x7 conv (no bias) -> BN (momentum 0.01) -> sigmoid gates the locations."""

    def __init__(self, c: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(c, c // REDUCTION), nn.ReLU(), nn.Linear(c // REDUCTION, c))
        self.spatial = nn.Sequential(nn.Conv2d(2, 1, 7, padding=3, bias=False), nn.BatchNorm2d(1, momentum=0.01))

    def forward(self, x):
        x = x * torch.sigmoid(self.mlp(x.amax(dim=(2, 3))) + self.mlp(x.mean(dim=(2, 3))))[:, :, None, None]
        return x * torch.sigmoid(self.spatial(torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)))


def _deattention(c: int, params: dict) -> nn.Module:
    return DeAttentionBlock(c, int(params.get("version", 1)), str(params.get("padding", "reflect")))


BLOCKS = {
    "deattention": _deattention,
    "crn": lambda c, params: CRNBlock(c, str(params.get("padding", "reflect"))),
    "se": lambda c, params: SEBlock(c),
    "bam": lambda c, params: BAMBlock(c),
    "cbam": lambda c, params: CBAMBlock(c),
}


def _canonical(layer: LayerSpec, where: str, previous) -> None:
    if layer.type == "deattention" and int(layer.params.get("version", 1)) not in (1, 2, 3):
        raise NetFormatError(f"{where}: de-attention version must be 1, 2 or 3, got {layer.params.get('version')}")
    if layer.params.get("padding", "reflect") not in ("reflect", "zeros"):
        raise NetFormatError(f"{where}: padding must be reflect or zeros, got {layer.params.get('padding')!r}")
    layer.weights = [np.asarray(w, np.float32) for w in layer.weights]


def _shape(layer: LayerSpec, s, where: str):
    """Sizes are kept; the 7x7 reflect padding of the mask branches needs maps of at least 4 x 4."""
    h, w = s[0], s[1]
    reflect = layer.type in ("deattention", "crn") and layer.params.get("padding", "reflect") == "reflect"
    if reflect and h is not None and w is not None and min(h, w) < 4:
        raise NetFormatError(f"{where}: a {h}x{w} map is too small for the 7x7 reflect-padded branch (4x4 at least)")
    return s


for _name, _build in BLOCKS.items():
    BUILDERS[_name] = _build
    register_layer(LayerType(_name, TorchBlockLayer, n_weights=range(0, 64), canonical=_canonical, shape=_shape))
# the --attention names: a layer type, its params and STML's fixed order: de-attention (tasks/train.py:56), then
# do_attention's ch, ECA (not ported), SE, BAM, CBAM, CRN (tasks/common.py:31-57; train.py:58)
register_attention("deattention-v1", "deattention", {"version": 1}, order=0)
register_attention("deattention-v2", "deattention", {"version": 2}, order=0)
for _order, _name in enumerate(("se", "bam", "cbam", "crn"), 3):
    register_attention(_name, _name, order=_order)
