"""Process groups under torchrun, shared by ``train`` and ``extract``: join the group, this process's rank
and the world size, the device of a local rank, barrier. Without torchrun (no ``WORLD_SIZE`` or 1) every
function is a no-op and the world is one process."""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the joined process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str, backend: str | None = None, timeout: timedelta | None = None) -> None:
    """Join the torchrun process group when launched with WORLD_SIZE > 1: ``backend`` (default nccl on
    GPUs, gloo on CPUs), rendezvous from torchrun's environment (MASTER_ADDR, RANK, ...)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        backend = backend or ("nccl" if str(device).startswith("cuda") else "gloo")
        if str(device).startswith("cuda:"):  # nccl's collectives and barrier run on the current GPU
            import torch

            torch.cuda.set_device(int(str(device).split(":")[1]))
        dist.init_process_group(backend, **({"timeout": timeout} if timeout else {}))


def local_device(device: str) -> str:
    """``--device`` for this process: ``auto`` or ``cuda`` become ``cuda:LOCAL_RANK`` under torchrun (one GPU
    per process on each node; modulo the GPU count, so more processes than GPUs share them) when GPUs are
    there; ``cpu`` and an explicit ``cuda:N`` are kept."""
    device = (device or "auto").strip().lower()
    local = os.environ.get("LOCAL_RANK")
    if local is None or int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))) < 2:
        return device
    import torch

    if device in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{int(local) % torch.cuda.device_count()}"
    return device


def rank_device(device: str | None) -> str:
    """``--device`` of this process, checked: :func:`local_device`, then ``devices.resolve_device``."""
    from .devices import resolve_device

    return str(resolve_device(local_device(device or "auto")))


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if world()[1] > 1:
        dist.barrier()
