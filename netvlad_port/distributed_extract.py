"""``extract`` under torchrun: the image list split across ranks, one output
([docs/formats.md#parts](../docs/formats.md#parts)).

Every rank lists the same images and plans the same batches as a single process would (equal sizes, in
order of first appearance); rank r describes batches r, r + W, ... into its own part,
``OUT.parts/rank<r>of<W>.h5`` (h5 whatever the output format, tagged like the output, flushed batch by
batch). After the last batch rank 0 merges the parts into OUT -- it copies the descriptors, OUT is never a
link to them -- atomically, in the list order, then removes the parts. The output equals a
single-process run's: the same names, order, tag and descriptor bytes.

A rank that dies leaves its part; rerunning with the same or another number of processes (one without
torchrun too) reads every part there, whatever world size wrote it, skips the names they hold and splits
the rest again. SIGTERM (torchrun stopping the other ranks when one fails) waits for the batch being
written. Unreadable parts (a rank killed mid-write) are removed and their images described again.

``extract._extract_in_parts`` runs these steps; this module holds the parts, the merge and the messages
between ranks. Test hook: ``NETVLAD_PORT_TEST_EXIT_AFTER=R:N`` makes rank R exit at once (status 3, no clean-up, as a
crash) after saving N or more images; the tests use it to stop a rank midway.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np

from .distributed import init_distributed, local_device, world
from .errors import NetVladPortError
from .feature_store import DESCRIPTOR, H5_WRITE, IMAGE_SIZE, check_tag, h5_names, write_h5_descriptor, write_tag
from .io_utils import atomic_file

TEST_EXIT = "NETVLAD_PORT_TEST_EXIT_AFTER"
TEST_EXIT_STATUS = 3
GROUP_TIMEOUT = timedelta(days=1)  # ranks wait for the slowest one at the end of their share


def parts_dir(out: Path) -> Path:
    """``OUT.parts``: the folder of the ranks' parts."""
    return out.with_name(out.name + ".parts")


def part_path(out: Path, rank: int, size: int) -> Path:
    return parts_dir(out) / f"rank{rank}of{size}.h5"


def wanted(out: Path) -> bool:
    """Whether ``extract`` to ``out`` goes through the parts: under torchrun, or parts of an earlier run are there."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or world()[1] > 1 or parts_dir(out).is_dir()


def part_names(h5) -> set[str]:
    """The image names of an open part whose group holds both datasets."""
    found: dict[str, set[str]] = {DESCRIPTOR: set(), IMAGE_SIZE: set()}

    def visit(name: str) -> None:
        group, _, leaf = name.rpartition("/")
        if leaf in found and group:
            found[leaf].add(group)

    h5.visit(visit)
    return found[DESCRIPTOR] & found[IMAGE_SIZE]


@contextlib.contextmanager
def process_group(device: str) -> Iterator[tuple[str, int, int]]:
    """(this process's device, rank, world size): joins torchrun's process group (gloo: only names and
    counts travel between ranks) unless one is joined already, and leaves what it joined."""
    import torch.distributed as dist

    device = local_device(device)
    joined = not (dist.is_available() and dist.is_initialized())
    init_distributed(device, backend="gloo", timeout=GROUP_TIMEOUT)
    joined = joined and dist.is_available() and dist.is_initialized()
    try:
        yield (device, *world())
    finally:
        if joined:
            dist.destroy_process_group()


def agree_and_prepare(out: Path, fmt: str, names: Sequence[str], tag: dict, force: bool) -> set[str]:
    """Before any rank writes: the names already done (in an h5 ``out`` and in every part), read by rank 0
    and sent to every rank; ranks that disagree on the images or the model, and outputs or parts with
    another tag (unless ``force``, which removes them), are refused on every rank."""
    rank, size = world()
    _agree(out, names, tag, size)
    error, done = _prepare(out, fmt, tag, force) if rank == 0 else (None, None)
    if size > 1:  # rank 0 has read every part before any rank writes to its own
        error, done = _collective(out, "broadcast", (error, done))
    if error:
        raise NetVladPortError(error)
    return done


def gather(out: Path, share) -> list | None:
    """Every rank's ``share`` on rank 0, in rank order (None on the others)."""
    return _collective(out, "gather", share) if world()[1] > 1 else [share]


def barrier(out: Path) -> None:
    """Wait for every rank; a rank that stopped is one line naming ``out``."""
    if world()[1] > 1:
        _collective(out, "barrier")


def _prepare(out: Path, fmt: str, tag: dict, force: bool) -> tuple[str | None, set[str]]:
    """On rank 0, before any rank writes: (the error refusing the run, or None; the names already done, in
    ``out`` when it is an h5 and in every part). Refuses an output or part with another tag unless ``force``
    (which removes it); removes unreadable parts."""
    import h5py

    try:
        check_tag(out, fmt, tag, force)
        done = h5_names(out) if fmt == "h5" else set()
        for part in sorted(parts_dir(out).glob("rank*of*.h5")):
            try:
                with h5py.File(part, "r"):
                    pass
            except OSError as exc:
                if "lock" in str(exc).lower():
                    raise NetVladPortError(f"{part}: open in another process (another extract to {out}?)") from None
                print(f"{part}: unreadable ({exc}); removed, its images are described again", file=sys.stderr)
                part.unlink()
                continue
            check_tag(part, "h5", tag, force)
            if part.exists():
                with h5py.File(part, "r") as f:
                    done |= part_names(f)
    except NetVladPortError as exc:
        return str(exc), set()
    return None, done


@contextlib.contextmanager
def read_parts(out: Path) -> Iterator[dict]:
    """Every name the parts hold, mapped to its open part (the first part holding it)."""
    import h5py

    with contextlib.ExitStack() as stack:
        where: dict[str, h5py.File] = {}
        for part in sorted(parts_dir(out).glob("rank*of*.h5")):
            f = stack.enter_context(h5py.File(part, "r"))
            for n in part_names(f):
                where.setdefault(n, f)
        yield where


def part_rows(where: dict, order: Sequence[str]) -> list[np.ndarray]:
    """The descriptors of ``order``, as the parts hold them."""
    return [where[n][n][DESCRIPTOR][()] for n in order]


def merge_h5(out: Path, names: Sequence[str], tag: dict) -> None:
    """Rank 0's merge into an h5 ``out``: every part's descriptors copied (the list's names in its order,
    then any other) beside what ``out`` held, into a temp file renamed into place."""
    import h5py

    if out.exists() and not any(parts_dir(out).glob("rank*of*.h5")):
        return
    present = h5_names(out)
    with read_parts(out) as where, atomic_file(out) as tmp:
        if out.exists():
            shutil.copyfile(out, tmp)
        with h5py.File(tmp, "r+" if out.exists() else "w", **H5_WRITE) as dst:
            write_tag(tmp, "h5", tag, dst)
            listed = [n for n in dict.fromkeys(names) if n in where]
            for n in listed + sorted(set(where) - set(listed)):
                if n not in present:
                    g = where[n][n]
                    write_h5_descriptor(dst, n, g[DESCRIPTOR][()], tuple(g[IMAGE_SIZE][()][::-1]))


def remove_parts(out: Path) -> None:
    shutil.rmtree(parts_dir(out), ignore_errors=True)


def _agree(out: Path, names: Sequence[str], tag: dict, size: int) -> None:
    """Refuse ranks that list other images or run another model or options than rank 0 (nodes see the files)."""
    if size == 1:
        return
    mine = (len(names), hashlib.sha256("\n".join(names).encode()).hexdigest(), json.dumps(tag, sort_keys=True))
    every = _collective(out, "all_gather", mine)
    for r, theirs in enumerate(every):
        if theirs[0] != every[0][0]:
            why = f"lists {theirs[0]} images, rank 0 {every[0][0]}"
        elif theirs[1] != every[0][1]:
            why = "lists other image names than rank 0"
        elif theirs[2] != every[0][2]:
            why = f"describes with another model or options than rank 0 ({theirs[2]} vs {every[0][2]})"
        else:
            continue
        raise NetVladPortError(f"{out}: rank {r} {why}; every rank must see the same --images and model")


def _collective(out: Path, op: str, obj=None):
    """``broadcast`` rank 0's ``obj``, ``all_gather`` or ``gather`` (to rank 0) every rank's, or ``barrier``; a
    rank that stopped is one line naming the output, never gloo's traceback."""
    import torch.distributed as dist

    try:
        rank, size = world()
        if op == "broadcast":
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        if op == "all_gather":
            every = [None] * size
            dist.all_gather_object(every, obj)
            return every
        if op == "gather":
            every = [None] * size if rank == 0 else None
            dist.gather_object(obj, every, dst=0)
            return every
        dist.barrier()
    except RuntimeError as exc:  # DistBackendError and gloo's errors: a peer is gone
        text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip())  # gloo's source location
        first = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        raise NetVladPortError(f"{out}: another rank stopped ({first}); the parts in {parts_dir(out)} are kept, "
                               f"rerun to continue") from None  # fmt: skip
    return None


def interrupted(out: Path, part: Path, rank: int, saved: int) -> str:
    return (f"{out}: interrupted; rank {rank} saved {saved} images in {part}, rerunning (with any number of "
            f"processes) continues")  # fmt: skip


class Termination:
    """SIGTERM as Ctrl-C while a rank describes its share, never in the middle of a batch's writes; and the
    test hook (``NETVLAD_PORT_TEST_EXIT_AFTER``)."""

    def __init__(self, rank: int):
        self.writing = self.pending = False
        self.previous = None
        r, _, n = os.environ.get(TEST_EXIT, "").partition(":")
        self.exit_after = int(n) if r.strip().isdigit() and n.strip().isdigit() and int(r) == rank else None

    def __enter__(self) -> Termination:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _handler(self, signum, frame) -> None:
        if self.writing:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
        if self.pending:
            raise KeyboardInterrupt

    def after_batch(self, saved: int) -> None:
        if self.exit_after is not None and saved >= self.exit_after:
            os._exit(TEST_EXIT_STATUS)
