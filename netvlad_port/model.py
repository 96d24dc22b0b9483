"""``SimpleNN``: a MatConvNet SimpleNN network (``vl_simplenn``) as a PyTorch module.

The structure comes from the file, so every ``addLayers`` method and every backbone (vd16, vd19,
caffe) works. ``model(x)`` takes N x 3 x H x W RGB in 0..255 and subtracts ``averageImage(1,1,:)``
itself, in float32 as MATLAB does (single); ``model.trace(x)`` returns what the parity suites
call ``acts``: the input of every layer and the network output, in MATLAB layer order.

A PyTorch-born network (GCL, STML, Nanne) records its own preprocessing in ``meta["preprocess"]``:
``model(x)`` then takes RGB in 0..1 (torchvision's ``ToTensor``) and normalises with its mean and std as
``Normalize`` does; ``meta["resize"]`` is the resize its original applies to images
([docs/pytorch_models.md](../docs/pytorch_models.md#preprocessing)).
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch
from torch import nn

from .devices import available_memory, human_bytes
from .errors import NetFormatError
from .images import Resize
from .layers import NORMALIZE_MODES, Normalize, ReLU, build_layer, matlab_flatten
from .matconvnet.spec import (
    LayerSpec,
    NetSpec,
    ensure_validated,
    infer_method,
    infer_shapes,
    layer_bytes,
    output_dim,
)


class SimpleNN(nn.Module):
    def __init__(self, spec: NetSpec, normalize: str = "exact"):
        super().__init__()
        spec = ensure_validated(spec)  # a spec from load_spec / read_net / make_net is not checked again
        channels = [3] + [c for _, _, c in infer_shapes(spec, image_hw=None)]
        self.layers = nn.ModuleList(build_layer(l, channels[i]) for i, l in enumerate(spec.layers))
        self.meta = {k: v for k, v in spec.meta.items() if k != "averageImage"}
        self._average_image = spec.meta.get("averageImage")
        pre = preprocess_of(spec.meta)
        self.pixel_range = 1.0 if pre else 255.0  # what model(x) takes: RGB in 0..255 or in 0..1
        mean, std = (pre["mean"], pre["std"]) if pre else (spec.average_rgb, [1.0, 1.0, 1.0])
        for name, value in (("average_rgb", mean), ("std_rgb", std)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.resize = Resize.from_meta(spec.meta.get("resize"))
        self.normalize_mode = normalize
        self._warned_range = False
        # the layer structure with weight shapes only (no memory), to check input sizes
        self._shapes = NetSpec(
            [LayerSpec(l.type, l.name, [np.broadcast_to(np.float32(0), np.shape(w)) for w in l.weights], l.params)
             for l in spec.layers]
        )  # fmt: skip
        self._input_errors: dict[tuple[int, int], str | None] = {}

    @property
    def normalize_mode(self) -> str:
        return self._normalize_mode

    @normalize_mode.setter
    def normalize_mode(self, mode: str) -> None:
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}")
        self._normalize_mode = mode
        for layer in self.layers:
            if isinstance(layer, Normalize):
                layer.mode = mode

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.layers]

    @property
    def fingerprint(self) -> str:
        """sha256 of every layer's name, MATLAB type and weights (MATLAB layout, float32): the tag of
        the features this model makes (``exported.OnnxRuntimeModel.fingerprint`` is its source's)."""
        h = hashlib.sha256()
        if self.pixel_range == 1.0:  # a PyTorch-born network: its preprocessing makes the descriptor too
            h.update(f"{self.average_rgb.flatten().tolist()}{self.std_rgb.flatten().tolist()}{self.resize};".encode())
        for layer in self.layers:
            h.update(f"{layer.name}:{layer.matlab_type};".encode())
            for w in layer.matlab_weights():
                h.update(np.ascontiguousarray(w).tobytes())
        return h.hexdigest()

    @property
    def method(self) -> str:
        return infer_method(self.to_spec())

    def _dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The network input, in float32: RGB 0..255 minus ``averageImage(1,1,:)`` ([docs/matlab.md#images]);
        for a PyTorch-born network RGB 0..1 minus mean, over std (torchvision's ``Normalize``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images as N x 3 x H x W RGB, got shape {tuple(images.shape)}")
        if not self._warned_range and images.numel():
            top = float(images.max())
            if self.pixel_range == 255.0 and top <= 1.0:
                warnings.warn("the images are in 0..1 (hloc's convention?); the MATLAB networks take RGB in 0..255",
                              stacklevel=3)  # fmt: skip
                self._warned_range = True
            elif self.pixel_range == 1.0 and top > 1.0:
                warnings.warn("the images are in 0..255; this PyTorch-born network takes RGB in 0..1 (ToTensor)",
                              stacklevel=3)  # fmt: skip
                self._warned_range = True
        x = images.to(device=self.average_rgb.device, dtype=torch.float32) - self.average_rgb.float()
        if self.pixel_range == 1.0:
            x = x / self.std_rgb.float()
        return x.to(self._dtype())

    def input_error(self, h: int, w: int) -> str | None:
        """Why an h x w image cannot go through the network -- a window larger than its input, or more
        memory than is free for one image (the largest layer input plus output, float32) -- or None."""
        if (h, w) not in self._input_errors:
            try:
                need, free = max(layer_bytes(self._shapes, (h, w))), available_memory()
                error = None if need <= free else f"it needs {human_bytes(need)} of memory, {human_bytes(free)} free"
            except NetFormatError as exc:
                error = str(exc)
            self._input_errors[(h, w)] = error
        return self._input_errors[(h, w)]

    def run(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Layers ``start .. stop-1`` (0-based) on an already mean-subtracted input. Without
        autograd, ReLUs work in place on the fresh tensors the previous layers return."""
        inplace = not torch.is_grad_enabled()
        for i, layer in enumerate(self.layers[start:stop]):
            x = layer(x, inplace=True) if inplace and i and isinstance(layer, ReLU) else layer(x)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W RGB (0..255, or 0..1 for a PyTorch-born network) -> N x D descriptors (MATLAB's
        ``reshape(res(end).x, [], N)``)."""
        return matlab_flatten(self.run(self.prepare(images)))

    def trace(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``acts``: [input after mean subtraction, output of layer 1, ..., output of layer L]."""
        acts = [self.prepare(images)]
        for layer in self.layers:
            acts.append(layer(acts[-1]))
        return acts

    def from_rgb255(self, images: torch.Tensor) -> torch.Tensor:
        """Images read as RGB 0..255 (``images.read_image``) in the range ``model(x)`` takes."""
        return to_pixel_range(images, self.pixel_range)

    def to_spec(self) -> NetSpec:
        """The network back in MATLAB layout (for ``save_converted`` and ``write_net``)."""
        layers = [layer.to_spec() for layer in self.layers]
        meta = dict(self.meta)
        if self._average_image is not None:
            meta["averageImage"] = self._average_image
        return NetSpec(layers=layers, meta=meta)

    @property
    def output_dim(self) -> int:
        dim = output_dim(self._shapes)  # the layer structure only: no copy of the weights
        if dim is None:
            raise ValueError("the output size depends on the image size")
        return dim


PREPROCESS_KEYS = ("mean", "std")


def preprocess_of(meta: dict) -> dict | None:
    """``meta["preprocess"]`` checked: ``{"mean": [3], "std": [3]}`` of RGB in 0..1, or None (MatConvNet's)."""
    pre = meta.get("preprocess")
    if pre is None:
        return None
    if not isinstance(pre, dict) or set(pre) - {"mean", "std", "range"}:
        raise NetFormatError(f"meta.preprocess: expected {{'mean': [r, g, b], 'std': [r, g, b]}}, got {pre!r}")
    for key in PREPROCESS_KEYS:
        v = pre.get(key)
        ok = isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
        if not ok or not all(np.isfinite(v)) or (key == "std" and min(v) <= 0):
            raise NetFormatError(f"meta.preprocess.{key}: expected three finite numbers{' > 0' * (key == 'std')}, "
                                 f"got {v!r}")  # fmt: skip
    return {"mean": [float(x) for x in pre["mean"]], "std": [float(x) for x in pre["std"]]}


def to_pixel_range(images: torch.Tensor, pixel_range: float) -> torch.Tensor:
    """RGB 0..255 as a model taking ``pixel_range`` wants it: as is, or ``/ 255`` as ``ToTensor`` divides."""
    return images if pixel_range == 255.0 else images.div(255)
