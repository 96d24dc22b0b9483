"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import time
from pathlib import Path


def proc_status_bytes(pid: int | str, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in bytes; None where unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def in_fresh_process(target, *args, timeout_s: float | None = None):
    """Run ``target(*args, queue)`` in a spawned process (its own peak RSS); return what it puts. Past
    ``timeout_s`` the process is killed and ``{"timeout_s": ..., "rss": its peak RSS so far}`` returned; a
    process that dies without an answer gives ``{"failed": exit code, "rss": None}``."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            wait = 5.0 if deadline is None else max(0.1, min(5.0, deadline - time.monotonic()))
            try:
                result = q.get(timeout=wait)
                p.join()
                return result
            except queue_mod.Empty:
                pass
            if not p.is_alive():
                try:  # an answer put just before it ended
                    return q.get(timeout=1.0)
                except queue_mod.Empty:
                    return {"failed": p.exitcode, "rss": None}
            if deadline is not None and time.monotonic() >= deadline:
                return {"timeout_s": timeout_s, "rss": proc_status_bytes(p.pid, "VmHWM")}
    finally:
        if p.is_alive():
            p.kill()
            p.join()
