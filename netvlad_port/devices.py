"""``--device``, checked once and the same way in every command."""

from __future__ import annotations

import os
import re

import torch

from .errors import NetVladPortError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (a GPU when one is there), ``cpu``, ``cuda`` or ``cuda:N``; anything else, or a GPU this
    machine or torch build lacks, is one clear error."""
    if isinstance(device, torch.device):
        device = str(device)
    device = (device or "auto").strip().lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not m:
        raise NetVladPortError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise NetVladPortError(f"--device {device}: no CUDA device is available (this torch build or machine has none)")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise NetVladPortError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(device)


def available_memory() -> int:
    """Bytes of RAM available now (8 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"
