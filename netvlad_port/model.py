"""``SimpleNN``: a MatConvNet SimpleNN network (``vl_simplenn``) as a PyTorch module.

The structure comes from the file, so every ``addLayers`` method and every backbone (vd16, vd19,
caffe) works. ``model(x)`` takes N x 3 x H x W RGB in 0..255 and subtracts ``averageImage(1,1,:)``
itself, in float32 as MATLAB does (single); ``model.trace(x)`` returns what the parity suites
call ``acts``: the input of every layer and the network output, in MATLAB layer order.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch
from torch import nn

from .devices import available_memory, human_bytes
from .errors import NetFormatError
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
        self.register_buffer("average_rgb", torch.from_numpy(spec.average_rgb).view(1, 3, 1, 1), persistent=False)
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

    def subtract_mean(self, images: torch.Tensor) -> torch.Tensor:
        """RGB 0..255 minus ``averageImage(1,1,:)``, computed in float32 ([docs/matlab.md#images])."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images as N x 3 x H x W RGB, got shape {tuple(images.shape)}")
        if not self._warned_range and images.numel() and float(images.max()) <= 1.0:
            warnings.warn(
                "the images are in 0..1 (hloc's convention?); the MATLAB networks take RGB in 0..255", stacklevel=3
            )
            self._warned_range = True
        x = images.to(device=self.average_rgb.device, dtype=torch.float32) - self.average_rgb.float()
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
        """N x 3 x H x W RGB 0..255 -> N x D descriptors (MATLAB's ``reshape(res(end).x, [], N)``)."""
        return matlab_flatten(self.run(self.subtract_mean(images)))

    def trace(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``acts``: [input after mean subtraction, output of layer 1, ..., output of layer L]."""
        acts = [self.subtract_mean(images)]
        for layer in self.layers:
            acts.append(layer(acts[-1]))
        return acts

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
