"""Read images the way NetVLAD's MATLAB pipeline does (``vl_imreadjpeg`` + ``serialAllFeats``,
docs/matlab.md#images): RGB float32 in 0..255, grey replicated to 3 channels, EXIF orientation
ignored, no resizing unless asked (``vl_imreadjpeg 'Resize', S``: shorter side to S, bilinear with antialiasing,
upsampling too). Pillow decodes JPEG with libjpeg's defaults (ISLOW DCT, fancy upsampling), the
decoder ``vl_imreadjpeg`` uses.

Images MATLAB's pipeline cannot take unambiguously are refused with a message naming the file:
CMYK JPEGs, 16-bit and float images, zero-size images. Palette and alpha images are converted to
RGB (alpha dropped, not composited).
"""

from __future__ import annotations

import os
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


def read_image(path: str | os.PathLike, resize_shorter: int | None = None) -> torch.Tensor:
    """3 x H x W float32 RGB in 0..255 (``vl_imreadjpeg``; grey -> 3 channels as ``serialAllFeats``)."""
    from PIL import Image

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
            arr = np.asarray(im, dtype=np.uint8)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path}: too large to decode safely ({exc})") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{path}: cannot decode ({exc})") from None
    t = torch.from_numpy(arr.astype(np.float32))
    t = t[None].expand(3, -1, -1) if t.ndim == 2 else t.permute(2, 0, 1)
    t = t.contiguous()
    if resize_shorter:
        t = resize_shorter_side(t, resize_shorter)
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
