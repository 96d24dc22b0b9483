"""Read images the way NetVLAD's MATLAB pipeline does (``vl_imreadjpeg`` + ``serialAllFeats``,
docs/matlab.md#images): RGB float32 in 0..255, grey replicated to 3 channels, EXIF orientation
ignored, no resizing unless asked (``vl_imreadjpeg 'Resize', S``: shorter side to S, bilinear with antialiasing,
upsampling too). Pillow decodes JPEG with libjpeg's defaults (ISLOW DCT, fancy upsampling), the
decoder ``vl_imreadjpeg`` uses.

A PyTorch-born network's own resize (``Resize``: a fixed H x W with a PIL filter, as GCL's
``transforms.Resize((480, 640))`` and STML's ``img.resize((640, 480))`` do) is applied to the 8-bit PIL
image, exactly as those originals do, before the tensor is made.

Images MATLAB's pipeline cannot take unambiguously are refused with a message naming the file:
CMYK JPEGs, 16-bit and float images, zero-size images. Palette and alpha images are converted to
RGB (alpha dropped, not composited).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import NetVladPortError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pnm", ".bmp", ".tif", ".tiff", ".webp"})


class ImageError(NetVladPortError):
    """An image that cannot be read as MATLAB would read it."""


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise ImageError(f"{path}: no such file" + (" (a broken link)" if path.is_symlink() else ""))
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file")  # a folder, FIFO or device would block or fail
    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (unrecognised format)") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot open ({exc})") from None


def _bits16(im) -> bool:
    """A 16-bit image, also where Pillow would quietly reduce it to 8 bits (16-bit RGB PNG and PPM)."""
    if "16" in im.mode:
        return True
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        for v in args if isinstance(args, tuple) else (args,):
            if (isinstance(v, str) and "16" in v) or (isinstance(v, int) and v > 255):  # rawmode, PPM maxval
                return True
    return False


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) from the file header, without decoding."""
    with _open(Path(path)) as im:
        w, h = im.size
    return h, w


PIL_FILTERS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class Resize:
    """How images are resized before the network: ``shorter`` (``vl_imreadjpeg 'Resize', S``: the shorter
    side to S, on the float image) or ``fixed`` (both sides to H x W on the 8-bit PIL image with a PIL
    filter, aspect not kept: torchvision's ``Resize((H, W))`` on a PIL image, or PIL's ``resize``)."""

    mode: str
    size: tuple[int, ...]
    filter: str = "bilinear"

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        return resized_hw(h, w, self.size[0]) if self.mode == "shorter" else (self.size[0], self.size[1])

    def as_meta(self) -> dict:
        return {"mode": self.mode, "size": list(self.size), **({"filter": self.filter} if self.mode == "fixed" else {})}

    def __str__(self) -> str:
        return f"shorter {self.size[0]}" if self.mode == "shorter" else f"{self.size[0]}x{self.size[1]} {self.filter}"

    @classmethod
    def from_meta(cls, value) -> Resize | None:
        """``meta["resize"]`` (None: no resize) checked, naming the field."""
        from .errors import NetFormatError

        if value is None:
            return None
        ok = isinstance(value, dict) and value.get("mode") in ("shorter", "fixed")
        size = value.get("size") if ok else None
        n = 1 if ok and value["mode"] == "shorter" else 2
        ok = (
            ok
            and isinstance(size, list)
            and len(size) == n
            and all(isinstance(v, int) and 0 < v < 1 << 16 for v in size)
        )
        ok = ok and value.get("filter", "bilinear") in PIL_FILTERS
        if not ok:
            filters = ", ".join(PIL_FILTERS)
            raise NetFormatError(f"meta.resize: expected {{'mode': 'fixed', 'size': [H, W], 'filter': one of "
                                 f"{filters}}} or {{'mode': 'shorter', 'size': [S]}}, got {value!r}")  # fmt: skip
        return cls(value["mode"], tuple(size), value.get("filter", "bilinear"))


def as_resize(value: Resize | int | None) -> Resize | None:
    """An int is ``vl_imreadjpeg``'s shorter-side size (``--resize-shorter``)."""
    return Resize("shorter", (int(value),)) if isinstance(value, int) and value else (value or None)


def read_image(path: str | os.PathLike, resize: Resize | int | None = None) -> torch.Tensor:
    """3 x H x W float32 RGB in 0..255 (``vl_imreadjpeg``; grey -> 3 channels as ``serialAllFeats``),
    resized by ``resize`` (an int: the shorter side, as ``vl_imreadjpeg 'Resize'``)."""
    from PIL import Image

    resize = as_resize(resize)

    path = Path(path)
    with _open(path) as im:
        w, h = im.size
        if w == 0 or h == 0:
            raise ImageError(f"{path}: zero-size image ({w}x{h})")
        mode = im.mode
        if mode == "CMYK":
            raise ImageError(f"{path}: CMYK image; vl_imreadjpeg does not convert CMYK: save it as RGB first")
        bits16 = _bits16(im)
        if bits16 or mode in ("I", "F") or mode.startswith("I;"):
            raise ImageError(
                f"{path}: {mode} {'16-bit' if bits16 else '32-bit'} image; the networks expect "
                f"8-bit RGB in 0..255: convert it to 8 bits first"
            )
        try:
            if mode in ("L", "RGB"):
                im.load()
            elif mode == "1" or mode in ("LA",):
                im = im.convert("L")
            else:  # P, RGBA, YCbCr, ...
                im = im.convert("RGB")
            if resize is not None and resize.mode == "fixed":
                im = im.resize((resize.size[1], resize.size[0]), getattr(Image.Resampling, resize.filter.upper()))
            arr = np.asarray(im, dtype=np.uint8)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path}: too large to decode safely ({exc})") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{path}: cannot decode ({exc})") from None
    t = torch.from_numpy(arr.astype(np.float32))
    t = t[None].expand(3, -1, -1) if t.ndim == 2 else t.permute(2, 0, 1)
    t = t.contiguous()
    if resize is not None and resize.mode == "shorter":
        t = resize_shorter_side(t, resize.size[0])
    return t


def resized_hw(h: int, w: int, shorter: int) -> tuple[int, int]:
    """Output size of ``vl_imreadjpeg 'Resize', S``: scale = max(S/W, S/H), sides rounded."""
    scale = max(shorter / w, shorter / h)
    return max(1, round(scale * h)), max(1, round(scale * w))


def resize_shorter_side(image: torch.Tensor, shorter: int) -> torch.Tensor:
    """Bilinear resize with antialiasing (when shrinking) so the shorter side becomes ``shorter``."""
    h, w = image.shape[-2:]
    oh, ow = resized_hw(h, w, shorter)
    if (oh, ow) == (h, w):
        return image
    return F.interpolate(image[None], size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)[0]
