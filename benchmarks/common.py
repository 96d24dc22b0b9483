"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import multiprocessing as mp


def in_fresh_process(target, *args):
    """Run ``target(*args, queue)`` in a spawned process (its own peak RSS); return what it puts."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    result = q.get()
    p.join()
    return result
