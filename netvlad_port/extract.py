"""Descriptor extraction at scale: MATLAB's ``serialAllFeats`` and ``computeRepresentation``.

Images are decoded in DataLoader worker processes while the model runs; images of equal size are
batched (MATLAB's ``cat(4, ...)`` needs equal sizes too), mixed sizes are grouped by size, and
outputs keep the input order. Formats ([docs/formats.md](../docs/formats.md)):

* ``h5``: hloc's global-descriptor layout, one group per image path relative to the image root
  with datasets ``global_descriptor`` (D,) and ``image_size`` (W, H). Written batch by batch and
  flushed; an interrupted run leaves a valid file and a rerun skips the names already in it.
* ``bin``: ``serialAllFeats``' raw float32, D values per image, image after image, plus
  ``<out>.names.txt``. Written atomically at the end.
* ``npy``: an N x D array plus ``<out>.names.txt``. Written atomically at the end.

Files that cannot be read stop the run (``on_error="stop"``) or are listed in
``<out>.skipped.txt`` with the reason (``on_error="skip"``); nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .devices import resolve_device
from .errors import Interrupted, NetVladPortError
from .feature_store import (
    H5_WRITE,
    check_tag,
    descriptor_tag,
    h5_names,
    images_stamp,
    write_h5_descriptor,
    write_tag,
)
from .images import IMAGE_EXTENSIONS, ImageError, Resize, as_resize, image_size, read_image
from .io_utils import atomic_file
from .layers.netvlad import crop_to_dim  # re-exported: retrieval and callers import it from here
from .model import to_pixel_range
from .precision import precision_mode

FORMATS = ("h5", "bin", "npy")


@dataclass
class ExtractReport:
    out: Path
    extracted: int = 0
    already_present: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    rank: int = 0  # under torchrun: this process's rank and the number of processes
    world: int = 1

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds else 0.0


def _utf8(name: str, where: Path) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise NetVladPortError(f"{where}: the file name {name!r} is not UTF-8; rename it") from None


def _one_line(name: str, where: str) -> None:
    """Refuse a name holding a line break: the name lists and skipped lists hold one name per line."""
    if "\n" in name or "\r" in name:
        raise NetVladPortError(f"{where} {name!r} holds a line break (CR or LF); image names cannot hold one")


def list_images(source: str | os.PathLike, root: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
    """(root, names): every image file under a folder (sorted, by extension), or the lines of a
    list file (paths relative to ``root``, default the list's folder)."""
    source = Path(source)
    if source.is_dir():
        base = Path(root) if root else source
        if root and Path(root).is_absolute() != source.is_absolute():  # compare like with like
            base, source = base.absolute(), source.absolute()
        if not source.absolute().is_relative_to(base.absolute()):
            raise NetVladPortError(f"--images {source}: not inside --root {base}; names are paths relative to the root")
        names = sorted(  # broken links are kept: they are reported like any unreadable image
            p.relative_to(base).as_posix()
            for p in source.rglob("*")
            if (p.is_file() or (p.is_symlink() and not p.exists())) and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        for n in names:
            _utf8(n, source)
            _one_line(n, f"{source}: the file name")
        if not names:
            raise NetVladPortError(f"{source}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return base, names
    if source.is_file():
        base = Path(root) if root else source.parent
        try:  # every non-empty line is a name, as written (no comments, spaces kept; CRLF ends a line too)
            lines = source.read_bytes().decode("utf-8").split("\n")
        except UnicodeDecodeError as exc:
            raise NetVladPortError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        lines = [line.removesuffix("\r") for line in lines]
        for number, line in enumerate(lines, start=1):
            _one_line(line, f"{source}: line {number}:")
        names = [line for line in lines if line]
        if not names:
            raise NetVladPortError(f"{source}: the image list is empty")
        return base, names
    raise NetVladPortError(f"{source}: no such folder or list file")


class _Images(torch.utils.data.Dataset):
    def __init__(self, root: Path, names: Sequence[str], resize: Resize | None):
        self.root, self.names, self.resize = root, names, resize

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        try:
            return i, read_image(self.root / self.names[i], self.resize), None
        except ImageError as exc:
            return i, None, str(exc)


def _collate(items):
    return items


def _size_batches(sizes: list[tuple[int, int] | None], batch_size: int) -> list[list[int]]:
    """Batches of equal-size images, in order of first appearance (unreadable ones alone)."""
    groups: OrderedDict = OrderedDict()
    for i, s in enumerate(sizes):
        groups.setdefault(s if s is not None else ("bad", i), []).append(i)
    return [idx[k : k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]


def infer_format(out: Path, fmt: str | None) -> str:
    fmt = fmt or out.suffix.lower().lstrip(".")
    fmt = {"hdf5": "h5"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise NetVladPortError(
            f"{out}: cannot tell the output format from the suffix; use --format {'|'.join(FORMATS)}"
        )
    return fmt


def plan_batches(
    base: Path,
    names: Sequence[str],
    todo: Sequence[int],
    batch_size: int,
    resize_shorter: Resize | int | None,
    fail,
    model=None,
) -> tuple[list[list[int]], dict[int, tuple[int, int]]]:
    """Batches of equal-size images (indices into ``names``) and each image's original (H, W);
    ``fail(i, message)`` is called for images whose header cannot be read, or that are too small
    for ``model``'s windows."""
    resize = as_resize(resize_shorter)
    sizes, original = [], {}
    for i in todo:
        try:
            h, w = original[i] = image_size(base / names[i])
            size = resize.out_hw(h, w) if resize is not None and h and w else (h, w)
            why = model.input_error(*size) if model is not None and h and w else None
            if why:
                raise ImageError(
                    f"{base / names[i]}: a {size[0]}x{size[1]} image cannot go through the network ({why})"
                )
            sizes.append(size)
        except ImageError as exc:
            sizes.append(None)
            fail(i, str(exc))
    batches = [[todo[j] for j in b] for b in _size_batches(sizes, batch_size) if sizes[b[0]] is not None]
    return batches, original


def iter_descriptors(
    model,
    base: Path,
    names: Sequence[str],
    batches: list[list[int]],
    fail,
    dim: int | None = None,
    resize_shorter: Resize | int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    num_workers: int | None = None,
    channels_last: bool | None = None,
    progress: bool = True,
    forward=None,
    desc: str = "extract",
):
    """Yield (indices, N x D float32 descriptors) batch by batch; decoding runs in worker processes.
    ``forward(x)`` replaces the whole network (e.g. only the frozen layers), its output is yielded as is."""
    from tqdm import tqdm

    resize = effective_resize(model, resize_shorter)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    if channels_last is None:  # faster for the VGG trunk on CPU and GPU alike (measured, benchmarks/extract.py);
        # a PyTorch-born network runs in the original's NCHW layout, which gives its last bits
        channels_last = pixel_range(model) == 255.0
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        _Images(base, names, resize),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
    )
    bar = tqdm(total=sum(map(len, batches)), unit="img", disable=not progress, desc=desc, smoothing=0.1)
    try:
        with torch.inference_mode(), precision_mode(precision, dev):
            for items in loader:
                ok = [(i, t) for i, t, err in items if err is None]
                for i, _, err in items:
                    if err is not None:
                        fail(i, err)
                if ok:
                    x = torch.stack([t for _, t in ok]).to(dev, non_blocking=True)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    if forward is not None:
                        out = forward(x)
                    else:
                        out = crop_to_dim(model(to_pixel_range(x, pixel_range(model))).float(), dim)
                    bad = (~torch.isfinite(out.reshape(len(ok), -1))).any(1).nonzero().flatten().tolist()
                    for row in bad:  # a model that gives NaN or inf: say where, never store it
                        fail(ok[row][0], f"{base / names[ok[row][0]]}: {nonfinite_origin(model, x[row : row + 1])}")
                    keep = [r for r in range(len(ok)) if r not in bad]
                    if keep:
                        yield [ok[r][0] for r in keep], out[keep].float().cpu().numpy()
                bar.update(len(items))
    finally:
        bar.close()


def nonfinite_origin(model, x: torch.Tensor) -> str:
    """Why a descriptor is not finite: the first layer whose output holds NaN or inf (``model.trace``)."""
    if not hasattr(model, "trace"):
        return "the exported network gives a non-finite descriptor (NaN or inf)"
    with torch.autocast(x.device.type, enabled=False):
        acts = model.trace(x.float())
    if not torch.isfinite(acts[0]).all():
        return "non-finite descriptor: the mean-subtracted image is already NaN or inf (averageImage?)"
    for layer, act in zip(model.layers, acts[1:]):
        if not torch.isfinite(act).all():
            return (f"non-finite descriptor: layer '{layer.name}' ({layer.matlab_type}) is the first to give NaN "
                    f"or inf (check its weights and parameters)")  # fmt: skip
    return "non-finite descriptor (NaN or inf) at reduced precision; fp32 gives finite values"


def check_dim(model, dim: int | None) -> int | None:
    """Refuse a ``--dim`` (cropToDim) outside 1..the model's descriptor dimension, before any work; return
    that dimension (None when it follows the image size)."""
    try:
        full = model.output_dim if hasattr(model, "output_dim") else model.meta.get("output_dim")
    except ValueError:
        full = None  # a cropped trunk: the output size follows the image size
    if dim is not None and (dim < 1 or (full is not None and dim > full)):
        raise NetVladPortError(f"--dim {dim}: must be between 1 and the descriptor dimension {full}")
    return full


def serial_all_feats(
    model,
    images: str | os.PathLike | Iterable[str],
    out_path: str | os.PathLike,
    batch_size: int = 10,
    fmt: str | None = None,
    root: str | os.PathLike | None = None,
    dim: int | None = None,
    resize_shorter: Resize | int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    num_workers: int | None = None,
    on_error: str = "stop",
    half: bool = False,
    channels_last: bool | None = None,
    progress: bool = True,
    force: bool = False,
    stamp: bool = False,
) -> ExtractReport:
    """MATLAB ``serialAllFeats(net, imPath, imageFns, outFn, 'batchSize', 10)``: descriptors of many
    images to ``out_path``. ``images`` is a folder, a list file, or an iterable of paths (then
    ``root`` is their common root). The output is tagged with the model and every option that
    changes descriptors; an existing output with another tag is refused (``force``: replaced). ``stamp``:
    the tag also records which files the images are (``feature_store.images_stamp``), so an output of
    other images with the same names is refused too (``test``'s feature cache)."""
    if on_error not in ("stop", "skip"):
        raise NetVladPortError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
    if batch_size < 1:
        raise NetVladPortError(f"--batch-size {batch_size}: must be at least 1")
    check_dim(model, dim)
    out = Path(out_path)
    fmt = infer_format(out, fmt)
    if half and fmt == "bin":
        raise NetVladPortError(f"{out}: --half needs h5 or npy (serialAllFeats' .bin holds float32 only)")
    if isinstance(images, (str, os.PathLike)):
        base, names = list_images(images, root)
    else:
        base, names = Path(root or "."), [str(n) for n in images]
        for i, n in enumerate(names, start=1):
            _one_line(n, f"image {i}:")
    report = ExtractReport(out=out, device=str(resolve_device(device)))
    tag = descriptor_tag(model, dim=dim, resize_shorter=resize_shorter, precision=precision, half=half)
    if resize_shorter is None and getattr(model, "resize", None) is not None:
        tag["resize"] = str(model.resize)  # the model's own policy
    resize_shorter = effective_resize(model, resize_shorter)
    if stamp:
        tag["images"] = images_stamp(base, names)
    run = {"dim": dim, "resize_shorter": resize_shorter, "device": device, "precision": precision,
           "num_workers": num_workers, "channels_last": channels_last, "progress": progress}  # fmt: skip
    from . import distributed_extract

    if distributed_extract.wanted(out):  # under torchrun, or parts of an earlier one are there: ranks share the list
        return _extract_in_parts(model, base, names, out, fmt, tag, report, force, on_error, batch_size, half, run)
    check_tag(out, fmt, tag, force)
    todo = list(range(len(names)))
    if fmt == "h5":
        present = h5_names(out)
        todo = [i for i in todo if names[i] not in present]
        report.already_present = len(names) - len(todo)

    def fail(i: int, msg: str):
        if on_error == "stop":
            raise ImageError(msg)
        report.skipped.append((names[i], msg))

    batches, original = plan_batches(base, names, todo, batch_size, resize_shorter, fail, model)
    store_dtype = np.float16 if half else np.float32
    start = time.perf_counter()
    if fmt == "h5":
        extract_to_h5(out, tag, model, base, names, batches, original, fail, report, store_dtype,
                      lambda: interrupted_message(out, fmt, report), **run)  # fmt: skip
    else:
        results: dict[int, np.ndarray] = {}
        try:
            for ids, desc in iter_descriptors(model, base, names, batches, fail, **run):
                results.update(zip(ids, desc))
                report.extracted += len(ids)
        except KeyboardInterrupt:
            raise Interrupted(interrupted_message(out, fmt, report)) from None
    report.seconds = time.perf_counter() - start
    if fmt != "h5":
        order = sorted(results)
        write_rows(out, fmt, [results[i] for i in order], [names[i] for i in order], tag, store_dtype)
    write_skipped(out, report.skipped)
    return report


def _extract_in_parts(model, base, names, out, fmt, tag, report, force, on_error, batch_size, half, run):
    """``serial_all_feats`` under torchrun, or finishing the parts an earlier run left: this rank's batches
    into its part, then rank 0 merges every part into ``out`` ([distributed_extract](distributed_extract.py)).
    Returns on every rank once ``out`` is complete; the report on rank 0 counts every rank's images."""
    from . import distributed_extract as dx

    with dx.process_group(run["device"]) as (device, rank, size):
        run = {**run, "device": device, "progress": run["progress"] and rank == 0}
        report.device, report.rank, report.world = str(resolve_device(device)), rank, size
        done = dx.agree_and_prepare(out, fmt, names, tag, force)
        todo = [i for i, n in enumerate(names) if n not in done]
        report.already_present = len(names) - len(todo)

        def fail(i: int, msg: str) -> None:
            if on_error == "stop":
                raise ImageError(msg)
            report.skipped.append((names[i], msg))

        def plan_fail(i: int, msg: str) -> None:  # every rank plans every image; rank 0 lists the skipped
            if on_error == "stop" or rank == 0:
                fail(i, msg)

        batches, original = plan_batches(base, names, todo, batch_size, run["resize_shorter"], plan_fail, model)
        store_dtype = np.float16 if half else np.float32
        start = time.perf_counter()
        if batches[rank::size]:
            part = dx.part_path(out, rank, size)
            with dx.Termination(rank) as term:
                extract_to_h5(part, tag, model, base, names, batches[rank::size], original, fail, report, store_dtype,
                              lambda: dx.interrupted(out, part, rank, report.extracted), guard=term.guard,
                              on_batch=term.after_batch, **run)  # fmt: skip
        shares = dx.gather(out, (report.extracted, report.skipped))
        if rank == 0:
            _merge_parts(out, fmt, names, tag, store_dtype, report, shares)
        report.seconds = time.perf_counter() - start
        dx.barrier(out)  # the output is complete on every rank when extract returns
    return report


def _merge_parts(out, fmt, names, tag, store_dtype, report, shares) -> None:
    """Rank 0: every rank's counts and skipped images, then the parts merged into ``out`` and removed."""
    from . import distributed_extract as dx

    report.extracted = sum(n for n, _ in shares)
    first = {n: i for i, n in reversed(list(enumerate(names)))}
    report.skipped = sorted({s for _, sk in shares for s in sk}, key=lambda s: (first.get(s[0], -1), s))
    if fmt == "h5":
        dx.merge_h5(out, names, tag)
    else:
        with dx.read_parts(out) as where:
            order = [n for n in names if n in where]
            write_rows(out, fmt, dx.part_rows(where, order), order, tag, store_dtype)
    write_skipped(out, report.skipped)
    dx.remove_parts(out)


def extract_to_h5(
    path: Path,
    tag: dict,
    model,
    base: Path,
    names: Sequence[str],
    batches: list[list[int]],
    original: dict[int, tuple[int, int]],
    fail,
    report: ExtractReport,
    store_dtype,
    interrupted,
    guard=contextlib.nullcontext,
    on_batch=None,
    **run,
) -> None:
    """Describe ``batches`` into the h5 ``path`` (tagged ``tag``), flushed batch by batch so that an
    interruption leaves a valid file; ``report.extracted`` counts them. Ctrl-C raises :class:`Interrupted`
    with ``interrupted()`` as its message; a file this call created and left empty is removed. ``guard()``
    wraps each batch's writes, ``on_batch(extracted)`` runs after each flush (``distributed_extract``)."""
    import h5py

    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    h5 = h5py.File(path, "a", **H5_WRITE)
    try:
        write_tag(path, "h5", tag, h5)
        for ids, desc in iter_descriptors(model, base, names, batches, fail, **run):
            with guard():
                for i, d in zip(ids, desc):
                    write_h5_descriptor(h5, names[i], d.astype(store_dtype), original[i])
                h5.flush()
            report.extracted += len(ids)
            if on_batch is not None:
                on_batch(report.extracted)
    except BaseException as exc:
        h5.close()
        if created and report.extracted == 0:  # stopped before any descriptor: leave nothing behind
            path.unlink(missing_ok=True)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(interrupted()) from None
        raise
    finally:
        h5.close()


def write_rows(out: Path, fmt: str, rows: list[np.ndarray], names: list[str], tag: dict, store_dtype) -> None:
    """A ``bin`` or ``npy`` output (atomic): ``rows`` in order, their names in ``OUT.names.txt``, the tag."""
    arr = np.stack(rows).astype(store_dtype) if rows else np.zeros((0, 0), store_dtype)
    with atomic_file(out) as tmp:
        if fmt == "bin":
            arr.astype(np.float32).tofile(tmp)  # serialAllFeats: float32, D per image
        else:
            with open(tmp, "wb") as f:
                np.save(f, arr)
    with atomic_file(names_path(out)) as tmp:
        tmp.write_text("".join(n + "\n" for n in names))
    write_tag(out, fmt, tag)


def write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    """``OUT.skipped.txt`` (atomic): each skipped image and why, tab-separated; nothing when none was."""
    if skipped:
        with atomic_file(skipped_path(out)) as tmp:
            tmp.write_text("".join(f"{n}\t{msg}\n" for n, msg in skipped))


def interrupted_message(out: Path, fmt: str, report: ExtractReport) -> str:
    """What an interrupted extraction kept: an h5 keeps every finished batch, and a rerun continues."""
    if fmt != "h5":
        return f"{out}: interrupted; nothing written ({fmt} files are written at the end), rerun to start again"
    if report.extracted == 0 and not out.exists():
        return f"{out}: interrupted before the first image was saved; nothing written"
    return (f"{out}: interrupted; {report.extracted} images saved ({report.extracted + report.already_present} in "
            f"the file), rerunning the same command continues")  # fmt: skip


def names_path(out: Path) -> Path:
    return out.with_name(out.name + ".names.txt")


def skipped_path(out: Path) -> Path:
    return out.with_name(out.name + ".skipped.txt")


def compute_representation(model, image, resize_shorter: int | None = None) -> torch.Tensor:
    """MATLAB ``computeRepresentation(net, im)``: the descriptor (D,) of one image, given as a path,
    an H x W x 3 array in 0..255, or a 3 x H x W tensor; ``model`` a :class:`SimpleNN` or an exported
    ``exported.OnnxRuntimeModel``."""
    if isinstance(image, (str, os.PathLike)):
        x = read_image(image, effective_resize(model, resize_shorter))
    else:
        x = torch.as_tensor(np.asarray(image, np.float32) if not torch.is_tensor(image) else image).float()
        if x.ndim == 2:
            x = x[None].expand(3, -1, -1)
        elif x.shape[0] != 3 and x.shape[-1] in (1, 3):
            x = x.permute(2, 0, 1).expand(3, -1, -1)
    with torch.inference_mode():
        return model(to_pixel_range(x[None], pixel_range(model)).to(model_device(model)))[0]


def effective_resize(model, resize_shorter: Resize | int | None) -> Resize | None:
    """``--resize-shorter`` when given, else the model's own resize (a PyTorch-born network's)."""
    return as_resize(resize_shorter) or getattr(model, "resize", None)


def pixel_range(model) -> float:
    """What ``model(x)`` takes: RGB in 0..255 (MATLAB networks) or in 0..1 (PyTorch-born ones)."""
    return getattr(model, "pixel_range", 255.0)


def model_device(model) -> torch.device:
    """Where a model's tensors are; the CPU for a model without any (``exported.OnnxRuntimeModel``)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")
