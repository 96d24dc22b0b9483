"""Semantic guidance for the de-attention mask ([docs/stml.md](../../../docs/stml.md#semantic-guidance)).

STML supervises the mask with a segmentation: 1 where a pixel keeps its meaning for place recognition,
0 on the rejected Cityscapes categories (the published script rejects human, vehicle and sky), resized to
the feature map by bicubic interpolation with ``align_corners=True`` (``tasks/common.py:142``), compared
by MSE with weight 0.1. No segmentation weights can be downloaded here, so the source is pluggable:

* ``masks:DIR`` -- a PNG per image, ``DIR/<image path relative to the dataset root>.png``, nonzero = keep;
* ``ids:DIR`` -- the same layout holding Cityscapes train-ids (0..18, 255 = void), ``reject`` chooses the
  categories (``make-synthetic --masks`` writes these);
* ``h5:FILE`` -- keep masks as datasets named by the relative image path;
* a callable (Python API): ImageNet-normalised N x 3 x H x W in, [N, 19, H, W] logits or [N, H, W]
  train-ids out.

Targets are cached per image at the feature-map size, like the trunk. The mask reaches the term through
a forward hook on the de-attention block's mask branch. The term and its options (``--guidance``,
``--guidance-reject``, ``--guidance-weight``, ``--guidance-loss``) are registered here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...clusters import MASK_SOURCES
from ...errors import NetVladPortError
from ...train.options import PluginOption, register_option
from ...train.terms import TermContext, TermEntry, register_term

# Cityscapes train-ids by category (MobileNet/cityscapes.py of STML; Cityscapes' own table)
CATEGORIES = {
    "flat": (0, 1),
    "construction": (2, 3, 4),
    "object": (5, 6, 7),
    "nature": (8, 9),
    "sky": (10,),
    "human": (11, 12),
    "vehicle": (13, 14, 15, 16, 17, 18),
}
REJECT = ("human", "vehicle", "sky")  # 1run_train_our_deattention_with_sTML.sh
LOSSES = ("mse", "bce")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def keep_from_ids(ids: np.ndarray, reject=REJECT) -> np.ndarray:
    """1 where the train-id is not in a rejected category, else 0 (void 255 is kept, as STML's map)."""
    unknown = set(reject) - set(CATEGORIES)
    if unknown:
        raise NetVladPortError(f"unknown Cityscapes categories {sorted(unknown)}: expected {', '.join(CATEGORIES)}")
    rejected = [i for c in reject for i in CATEGORIES[c]]
    return (~np.isin(ids, rejected)).astype(np.float32)


def resize_target(keep: np.ndarray | torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """The keep mask at the feature map's size: float, bicubic, ``align_corners=True`` (it may
    overshoot [0, 1] slightly, as the original's)."""
    t = torch.as_tensor(np.asarray(keep, np.float32))[None, None]
    return F.interpolate(t, size=hw, mode="bicubic", align_corners=True)[0, 0]


def dataset_root(db) -> Path:
    """The folder mask paths are relative to: the common parent of a dataset's db and query folders."""
    return Path(os.path.commonpath([str(db.db_path.resolve()), str(db.q_path.resolve())]))


class Guidance:
    """Where the keep masks come from (see the module docstring), relative to the dataset ``root``."""

    def __init__(self, source: str | Callable, root: str | os.PathLike, reject=REJECT):
        self.root, self.reject = Path(root), tuple(reject)
        keep_from_ids(np.zeros(1), self.reject)  # check the categories now
        self._cache: dict[tuple[str, tuple[int, int]], torch.Tensor] = {}
        if callable(source):
            self.kind, self.where, self.fn = "callable", None, source
            return
        kind, sep, where = str(source).partition(":")
        if not sep or kind not in ("masks", "ids", "h5"):
            raise NetVladPortError(f"--guidance {source!r}: expected masks:DIR, ids:DIR or h5:FILE")
        self.kind, self.where, self.fn = kind, Path(where), None
        if not (self.where.is_file() if kind == "h5" else self.where.is_dir()):
            what = "file" if kind == "h5" else "folder"
            raise NetVladPortError(f"--guidance {source!r}: {self.where} is not a {what}")

    def describe(self) -> dict:
        return {"source": self.kind, "where": str(self.where) if self.where else None, "reject": list(self.reject)}

    def relative(self, image: str | os.PathLike) -> str:
        try:
            return Path(image).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            raise NetVladPortError(f"{image}: not under the dataset root {self.root}") from None

    def keep(self, image: str | os.PathLike) -> np.ndarray:
        """The full-resolution keep mask of one image (H x W, 1 keep / 0 reject)."""
        if self.kind == "callable":
            return self._from_callable(image)
        name = self.relative(image)
        if self.kind == "h5":
            import h5py

            with h5py.File(self.where, "r") as f:
                if name not in f:
                    raise NetVladPortError(f"{self.where}: no mask for {name}")
                return (np.asarray(f[name]) != 0).astype(np.float32)
        path = self.where / (name + ".png")
        if not path.is_file():
            raise NetVladPortError(f"{path}: no guidance mask for {image}")
        from PIL import Image

        try:
            with Image.open(path) as im:
                a = np.asarray(im.convert("L") if im.mode not in ("L", "P", "I") else im)
        except OSError as exc:
            raise NetVladPortError(f"{path}: not a readable PNG ({exc})") from None
        return (a != 0).astype(np.float32) if self.kind == "masks" else keep_from_ids(a, self.reject)

    def _from_callable(self, image) -> np.ndarray:
        from ...images import read_image

        x = read_image(image)[None] / 255.0  # 1 x 3 x H x W, RGB 0..1
        x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        with torch.no_grad():
            out = torch.as_tensor(self.fn(x))
        ids = out.argmax(1)[0] if out.ndim == 4 else out[0]
        return keep_from_ids(ids.cpu().numpy(), self.reject)

    def target(self, image: str | os.PathLike, hw: tuple[int, int]) -> torch.Tensor:
        """The keep mask resized to ``hw`` (cached per image and size)."""
        key = (str(image), tuple(hw))
        if key not in self._cache:
            self._cache[key] = resize_target(self.keep(image), hw)
        return self._cache[key]


def guidance_loss(mask: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Summed over pixels: squared error (MSE) or binary cross-entropy with the target clamped to [0, 1]
    (the original passes BCE's arguments swapped, ``common.py:143``; fixed here)."""
    if kind == "mse":
        return ((mask - target) ** 2).sum()
    if kind == "bce":
        return F.binary_cross_entropy(mask.clamp(1e-6, 1 - 1e-6), target.clamp(0, 1), reduction="sum")
    raise NetVladPortError(f"guidance loss must be one of {', '.join(LOSSES)}, got {kind!r}")


def deattention_layer(model):
    """The model's de-attention layer, or None."""
    for layer in model.layers:
        if getattr(layer, "matlab_type", "") == "deattention":
            return layer
    return None


class MaskCatcher:
    """Keeps the mask m of each forward pass of a de-attention layer (a forward hook on its branch)."""

    def __init__(self, layer):
        self.mask: torch.Tensor | None = None
        self._handle = layer.block.mask.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.mask = output

    def remove(self) -> None:
        self._handle.remove()


@torch.no_grad()
def mask_iou(model, guidance: Guidance, images, threshold: float = 0.5) -> float:
    """IoU of the rejected regions: the de-attention mask below ``threshold`` against the target below
    it, over ``images`` (each at the feature map's size)."""
    from ...images import read_image

    layer = deattention_layer(model)
    if layer is None:
        raise NetVladPortError("the network has no de-attention layer")
    model.eval()
    catcher = MaskCatcher(layer)
    inter = union = 0.0
    try:
        for image in images:
            model(model.from_rgb255(read_image(image, getattr(model, "resize", None))[None]))
            m = catcher.mask[0, 0]
            t = guidance.target(image, tuple(m.shape))
            a, b = m < threshold, t < threshold
            inter += float((a & b).sum())
            union += float((a | b).sum())
    finally:
        catcher.remove()
    return inter / union if union else 1.0


class GuidanceTerm:
    """STML's batch objective sum(l) / nNeg + w * MSE over the batch's mask pixels, as a term: each tuple
    adds ``w * nNeg / images`` x the mean over pixels of the squared error (or BCE) of its images' masks
    against their targets (flipped with the images when jittered)."""

    name = "guidance_loss"

    def __init__(self, guidance: Guidance, layer, weight: float, kind: str, image_paths: list[str]):
        self.guidance, self.weight, self.kind, self.paths = guidance, weight, kind, image_paths
        self.catcher = MaskCatcher(layer)
        self.scale = 0.0

    def begin_batch(self, tuples: list) -> None:
        n_images = sum(2 + len(t.negatives) for t in tuples)
        self.scale = self.weight * sum(len(t.negatives) for t in tuples) / max(n_images, 1)

    def __call__(self, tup, image_ids: list[int]) -> torch.Tensor:
        m = self.catcher.mask[:, 0]
        scale = self.scale / m[0].numel()
        t = torch.stack([self.guidance.target(self.paths[i], tuple(m.shape[1:])) for i in image_ids]).to(m)
        if tup.jitter[1]:
            t = t.flip(-1)
        return scale * guidance_loss(m, t, self.kind)


def build_guidance(ctx: TermContext) -> GuidanceTerm | None:
    """The de-attention mask's supervision of a run (``--guidance``), or None."""
    opts = ctx.opts
    if not opts.extra("guidance"):
        return None
    layer = deattention_layer(ctx.model)
    if layer is None:
        raise NetVladPortError("--guidance supervises a de-attention mask: add --attention deattention-v1 (or -v2)")
    kind = opts.extra("guidance_loss")
    if kind not in LOSSES:
        raise NetVladPortError(f"guidance loss must be one of {', '.join(LOSSES)}, got {kind!r}")
    if list(ctx.model.layers).index(layer) < ctx.first:
        raise NetVladPortError(f"--guidance trains the de-attention mask, but '{layer.name}' is below "
                               f"backPropToLayer {opts.back_prop_to_layer} (frozen)")  # fmt: skip
    guidance = Guidance(opts.extra("guidance"), dataset_root(ctx.db), opts.extra("guidance_reject"))
    return GuidanceTerm(guidance, layer, opts.extra("guidance_weight"), kind, ctx.image_paths)


register_term(TermEntry("guidance", build_guidance, "STML's semantic guidance of the de-attention mask"))
register_option(
    PluginOption(
        "guidance",
        "",
        "the de-attention mask's supervision: masks:DIR (keep masks), ids:DIR "
        "(Cityscapes train-ids) or h5:FILE, per image path under the dataset root + .png",
    )
)
register_option(
    PluginOption(
        "guidance_reject", REJECT, "Cityscapes categories of ids:DIR the mask rejects [human,vehicle,sky]", "names"
    )
)
register_option(PluginOption("guidance_weight", 0.1, "weight of the mask loss (STML's --w_deatt_loss) [0.1]", "float"))
register_option(PluginOption("guidance_loss", "mse", "mask loss [mse]", LOSSES))


def _keep_masks(source: str, db, reject) -> Callable:
    """``cluster --keep-masks``: STML's re-clustering reads the same sources (docs/stml.md#start-network)."""
    return Guidance(source, dataset_root(db), reject).keep


MASK_SOURCES.register("guidance", _keep_masks)
