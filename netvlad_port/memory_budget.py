"""What ``--max-memory`` counts: the whole process's resident memory, measured (``VmRSS``, and the peak
``VmHWM`` over one step after resetting it through ``/proc/self/clear_refs``), against a budget given as
a size ([docs/formats.md#search-memory-and-speed](../docs/formats.md#search-memory-and-speed))."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from .errors import NetVladPortError

DEFAULT_CHUNK_MEMORY = "2GB"  # without --max-memory (None): this much for chunks beyond what the process holds
WORKSPACE = 64 * 2**20  # faiss's distance blocks (4096 x 1024 floats) and HDF5's metadata cache, with room
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_memory(text: str | int) -> int:
    """Bytes of a size such as ``2GB``, ``512MiB``, ``1.5g`` or ``1000000``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise NetVladPortError(f"--max-memory {text}: expected a size such as 2GB, 512MiB or 1.5G")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def memory_budget(max_memory, in_use: int) -> tuple[int, str]:
    """(bytes, how to name it in a message): ``max_memory`` parsed, or without one (None)
    ``DEFAULT_CHUNK_MEMORY`` beyond ``in_use``."""
    if max_memory is not None:
        return parse_memory(max_memory), str(max_memory)
    return in_use + parse_memory(DEFAULT_CHUNK_MEMORY), f"{DEFAULT_CHUNK_MEMORY} + {in_use / 1e9:.2f} GB in use"


def process_rss() -> int:
    """This process's resident memory now, in bytes: ``VmRSS`` of ``/proc/self/status``; where there is no
    /proc, the peak so far (``ru_maxrss``), which is never less."""
    rss = _status_bytes("VmRSS")
    if rss is not None:
        return rss
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, Linux kB


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def release_freed() -> None:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``), so that ``VmRSS`` counts what is
    live: memory a step frees and keeps (faiss's training buffers) would otherwise be reused unseen by the
    next step's measured peak. Nothing where there is no glibc."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def reset_peak() -> bool:
    """Start a new peak: ``VmHWM`` back to ``VmRSS`` (Linux: ``5`` into ``/proc/self/clear_refs``). False
    where this cannot be done (then :func:`peak_since_reset` means nothing)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def peak_since_reset() -> int:
    """The highest resident memory since :func:`reset_peak` (``VmHWM``), in bytes."""
    return _status_bytes("VmHWM") or process_rss()
