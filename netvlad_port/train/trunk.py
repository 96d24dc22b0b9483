"""The frozen trunk, computed once (fast by design, exact by default).

Layers below ``backPropToLayer`` never change during training, so their output for an image is the
same all run. ``TrunkCache`` computes it once per image (database and queries) and keeps it in
memory, or memory-mapped on disk when it does not fit; every cache refresh and every tuple then
runs only the trainable layers (conv5 + VLAD for the recipes: ~11x fewer FLOPs at 480x640).
``mode="none"`` recomputes the frozen layers from the images each time, as other ports do.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..devices import available_memory as _available_bytes
from ..devices import human_bytes as _human
from ..devices import resolve_device
from ..errors import NetVladPortError
from ..extract import iter_descriptors, plan_batches
from ..images import image_size, read_image

MEMORY_FRACTION = 0.4  # of available RAM; above it 'auto' goes to disk


class TrunkCache:
    def __init__(
        self,
        model,
        first: int,
        root: Path,
        names: list[str],
        mode: str = "auto",
        fp16: bool = False,
        batch_size: int = 10,
        device: str = "cpu",
        cache_dir: str | os.PathLike | None = None,
        progress: bool = False,
    ):
        if mode not in ("auto", "memory", "disk", "none"):
            raise NetVladPortError(f"trunk cache mode must be auto, memory, disk or none, got {mode!r}")
        self.model, self.first, self.root, self.names = model, first, Path(root), list(names)
        self.device = resolve_device(device)
        self.mode = mode
        self.dtype = np.float16 if fp16 else np.float32
        self._arrays: dict[tuple, np.ndarray] = {}  # output shape -> array of that shape's images
        self._where: list[tuple[tuple, int]] = []  # image -> (output shape, row)
        self.resize = getattr(model, "resize", None)  # a PyTorch-born network's own resize (GCL's, STML's)
        sizes = [image_size(self.root / n) for n in self.names]
        self.sizes = [self.resize.out_hw(*hw) if self.resize else hw for hw in sizes]  # (H, W) the network sees
        for hw in dict.fromkeys(self.sizes):  # refuse what the network cannot take, before computing anything
            if (error := model.input_error(*hw)) is not None:
                first = self.names[self.sizes.index(hw)]
                raise NetVladPortError(f"{self.root / first}: a {hw[0]}x{hw[1]} image cannot go through the network: "
                                       f"{error}")  # fmt: skip
        if mode != "none":
            self._build(batch_size, cache_dir, progress)

    def frozen(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen layers' output for RGB 0..255 ``images`` (N x 3 x H x W)."""
        return self.model.run(self.model.prepare(self.model.from_rgb255(images)), 0, self.first)

    def _build(self, batch_size, cache_dir, progress) -> None:
        def fail(i, msg):
            raise NetVladPortError(msg)

        batches, _ = plan_batches(self.root, self.names, range(len(self.names)), batch_size, self.resize, fail)
        out_shape: dict[tuple, tuple] = {}
        with torch.inference_mode():  # the output shape of each image size
            for i, hw in enumerate(self.sizes):
                if hw not in out_shape:
                    x = read_image(self.root / self.names[i], self.resize)[None].to(self.device)
                    out_shape[hw] = tuple(self.frozen(x).shape[1:])
        shapes = {i: out_shape[hw] for i, hw in enumerate(self.sizes)}
        counts: dict[tuple, int] = {}
        self._where = [None] * len(self.names)  # type: ignore[list-item]
        for i in range(len(self.names)):
            self._where[i] = (shapes[i], counts.get(shapes[i], 0))
            counts[shapes[i]] = counts.get(shapes[i], 0) + 1
        total = sum(n * int(np.prod(s)) for s, n in counts.items()) * np.dtype(self.dtype).itemsize
        ram = _available_bytes()
        disk = self.mode == "disk" or (self.mode == "auto" and total > MEMORY_FRACTION * ram)
        self.mode = "disk" if disk else "memory"
        folder = Path(cache_dir or tempfile.gettempdir())
        if disk:
            folder.mkdir(parents=True, exist_ok=True)
            free, where = shutil.disk_usage(folder).free, f"{folder} has"
        else:
            free, where = ram, "the machine has"
        if total > free:
            n = sum(counts.values())
            raise NetVladPortError(
                f"frozen-trunk cache: {n} images need {_human(total)} ({'disk' if disk else 'memory'}), but "
                f"{where} {_human(free)} free; use --trunk-fp16 (half the size), --trunk-cache none (recompute "
                f"the frozen layers, slower) or --trunk-dir on a larger disk"
            )
        for _j, (shape, n) in enumerate(counts.items()):
            if disk:
                folder.mkdir(parents=True, exist_ok=True)
                fd, path = tempfile.mkstemp(prefix="trunk_", suffix=".f32", dir=folder)
                os.close(fd)
                self._arrays[shape] = np.memmap(path, dtype=self.dtype, mode="w+", shape=(n,) + shape)
                os.unlink(path)  # the mapping keeps it alive; nothing is left behind
            else:
                self._arrays[shape] = np.empty((n,) + shape, self.dtype)
        for ids, out in iter_descriptors(
            self.model,
            self.root,
            self.names,
            batches,
            fail,
            device=str(self.device),
            forward=self.frozen,
            progress=progress,
            desc="frozen trunk",
            channels_last=False,
        ):
            for i, o in zip(ids, out):
                shape, row = self._where[i]
                self._arrays[shape][row] = o

    def get(self, ids) -> torch.Tensor:
        """Frozen-layer outputs of images ``ids`` (all of one size), float32, on the model's device."""
        if self.mode == "none":
            x = torch.stack([read_image(self.root / self.names[i], self.resize) for i in ids]).to(self.device)
            with torch.no_grad():
                return self.frozen(x)
        shape = self._where[ids[0]][0]
        rows = [self._where[i][1] for i in ids]
        if any(self._where[i][0] != shape for i in ids):
            raise NetVladPortError("a tuple mixes image sizes; MATLAB's cat(4, ...) cannot either")
        return torch.from_numpy(np.asarray(self._arrays[shape][rows], np.float32)).to(self.device)

    def groups(self, batch_size: int):
        """Batches of image indices of equal size, covering every image."""
        by_size: dict[tuple, list[int]] = {}
        for i, hw in enumerate(self.sizes):
            by_size.setdefault(hw, []).append(i)
        for ids in by_size.values():
            for k in range(0, len(ids), batch_size):
                yield ids[k : k + batch_size]
