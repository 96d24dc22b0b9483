"""Numerical modes. fp32 is exact, on GPUs too: TF32 is off for matmuls and cuDNN convolutions
(recent torch versions let cuDNN use TF32 by default on Ampere and newer), and training picks
deterministic cuDNN algorithms. ``tf32``, ``bf16`` and ``fp16`` are opt-in speed-ups."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import NetVladPortError

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def _tf32(enabled: bool) -> tuple[bool, bool]:
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    return old


def exact_math(deterministic: bool = True, tf32: bool = False) -> None:
    """For the whole process (a training run): no TF32 (unless asked); deterministic cuDNN algorithms."""
    _tf32(tf32)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def precision_mode(precision: str, device: torch.device) -> Iterator[None]:
    """Run a block in ``precision``: fp32 and tf32 set the TF32 flags (restored afterwards); bf16 and
    fp16 autocast."""
    if precision not in PRECISIONS:
        raise NetVladPortError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision in ("fp32", "tf32"):
        old = _tf32(precision == "tf32")
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        with torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16):
            yield
