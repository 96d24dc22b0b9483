"""``netvlad-port``: the command line. Each command parses its options, calls the library function its
help names and prints what it did; the choices of registered things (losses, recipes, protocols, plug-in
options) are read from the registries when a command runs, so plug-ins count and ``--help`` stays fast."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from . import __version__
from .errors import Interrupted, NetVladPortError
from .io_utils import refuse_existing
from .loading import BACKENDS


def _friendly(fn):
    """Report our errors as one line (exit 1), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:  # Ctrl-C: what was kept, and the shell's exit status for SIGINT
            click.echo(str(exc), err=True)
            raise SystemExit(exc.exit_code) from None
        except NetVladPortError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:  # e.g. `netvlad-port info m.mat | head`
            return None
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from None

    return wrapper


class LazyChoice(click.Choice):
    """A choice among names read when the command runs: ``names()`` returns them (a registry, or a
    constant of a module that imports torch), so plug-ins count and ``--help`` stays fast."""

    def __init__(self, names):
        self.names, self.case_sensitive = names, False

    @property
    def choices(self):
        return tuple(self.names())


def _precisions():
    from .precision import PRECISIONS

    return PRECISIONS


def _normalize_modes():
    from .layers.simplenn import NORMALIZE_MODES

    return NORMALIZE_MODES


RNGS = ("matlab", "numpy")  # matlab_random.make_rng

# options that mean the same in every command
_device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
_quiet_option = click.option("--quiet", is_flag=True, help="No progress bar.")
_workers_option = click.option("--workers", type=int, default=None, help="Decoding processes (default min(4, CPUs)).")


def _search_options(fn):
    """The search of ``test`` and ``search``: exact in bounded memory, or a faiss index."""
    for option in reversed([
        click.option("--index", "index", help="Approximate search: a faiss index-factory string (IVF4096,PQ64, "
                     "HNSW32, OPQ64,IVF4096,PQ64 ...; Flat: exact) built here, or an index file from `index`."),
        click.option("--index-params", help="faiss search parameters of the index, e.g. nprobe=32 or efSearch=128."),
        click.option("--max-memory", default=None, help="Memory for the whole process (8GB, 512MiB ...): the "
                     "database chunks get what it does not hold already [2GB of chunks beyond it]."),
        click.option("--chunk-size", type=int, default=None, help="Database rows per chunk (instead of --max-memory)."),
    ]):  # fmt: skip
        fn = option(fn)
    return fn


def _normalize_option(
    fn=None, text="matconvnet-cpu: MatConvNet's CPU LRN, to match features MATLAB computed on a CPU."
):
    option = click.option("--normalize", type=LazyChoice(_normalize_modes), default="exact", show_default=True,
                          help=text)  # fmt: skip
    return option(fn) if fn is not None else option


_mat_version_option = click.option(
    "--mat-version", "mat_version", type=click.Choice(["v7", "v7.3"]), default="v7", show_default=True,
    help="MAT-file version: v7 (MAT v5 container) or v7.3 (HDF5).",
)  # fmt: skip
_precision_option = click.option(
    "--precision", type=LazyChoice(_precisions), default="fp32", show_default=True,
    help="fp32 is exact; the others are opt-in GPU speed-ups.",
)  # fmt: skip
_rng_option = click.option(
    "--rng",
    type=click.Choice(RNGS),
    default="matlab",
    show_default=True,
    help="Random draws: MATLAB's generator and calls (rng/randperm/randsample), or numpy's.",
)


def _model_input(dest: str = "model_path", required: bool = True, text: str = "The network: a MatConvNet .mat (any "
                 "encoding) or a converted folder."):  # fmt: skip
    """The network, the same way in every command: as the argument MODEL or as --model."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, model_arg=None, model_opt=None, **kwargs):
            if model_arg is not None and model_opt is not None and model_arg != model_opt:
                raise click.UsageError(f"two networks given ({model_arg} and --model {model_opt}); give one")
            model = model_opt if model_opt is not None else model_arg
            if model is None and required:
                raise click.UsageError("no network given: pass MODEL (a .mat or a converted folder) or --model")
            return fn(*args, **{dest: model}, **kwargs)

        wrapper = click.option("--model", "model_opt", type=click.Path(path_type=Path), help=text)(wrapper)
        return click.argument("model_arg", metavar="[MODEL]", required=False, type=click.Path(path_type=Path))(wrapper)

    return decorate


def _image_size(value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
        return h, w
    except ValueError:
        raise click.BadParameter(f"expected HxW such as 480x640, got {value!r}") from None


# the commands in workflow order, each with one plain line (the MATLAB functions in parentheses)
COMMANDS = {
    "demo": "Run the whole job on built-in synthetic data.",
    "make-synthetic": "Write the synthetic streets (dbStruct or MSLS).",
    "convert": "Convert a .mat or a .pth to safetensors + JSON (load).",
    "info": "Show a network's layers and sizes (vl_simplenn_display).",
    "cluster": "Build the start network (loadNet, getClusters, addLayers).",
    "train": "Train it (trainWeakly, deepIBL's train*.m).",
    "pca": "Add PCA whitening (addPCA).",
    "extract": "Describe many images (serialAllFeats).",
    "test": "Measure recall@N on a dataset (testFromFn).",
    "search": "Write image pairs for hloc (pairs_from_retrieval).",
    "index": "Build a faiss index for approximate search.",
    "parity": "Compare a network with a MATLAB dump, layer by layer.",
    "export-mat": "Write a network back as a MatConvNet .mat.",
    "fetch": "Download a released network by name and convert it.",
    "export-onnx": "Write a network as ONNX, checked with onnxruntime.",
    "export-torchscript": "Write a network as TorchScript, checked.",
}


class Commands(click.Group):
    def list_commands(self, ctx):
        return [c for c in COMMANDS if c in self.commands] + sorted(set(self.commands) - set(COMMANDS))

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is not None and name in COMMANDS:
            cmd.short_help = COMMANDS[name]
        return cmd


@click.group(cls=Commands)
@click.version_option(__version__, prog_name="netvlad-port")
def main():
    """Exact PyTorch port of MATLAB/MatConvNet NetVLAD + SARE: the commands, in the order of the
    work (MATLAB's names in parentheses)."""


@main.command()
@_model_input(dest="model")
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Output folder (model.safetensors + config.json).",
)
@click.option("--from", "source", help="A .pth checkpoint's original: gcl, stml or nanne (default: from its keys).")
@click.option("--arch", help="A checkpoint's backbone, when its keys leave a choice (vgg16, resnet50, ...).")
@click.option("--pooling", help="A checkpoint's pooling without weights: max or avg (Nanne's --pooling).")
@click.option("--image-size", help="HxW the original resizes images to (GCL's --image_size), or 'none'.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="An importer's own option, e.g. deattention_version=2 (docs/pytorch_models.md).")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@_friendly
def convert(model: Path, out_dir: Path, source, arch, pooling, image_size, settings, force: bool):
    """Convert a MatConvNet MODEL.mat (any encoding), or a GCL, STML or Nanne .pth checkpoint, into a
    folder of safetensors + JSON."""
    from .converted import config_of, save_converted
    from .importers import import_checkpoint, is_checkpoint
    from .loading import check_memory
    from .matconvnet import read_net

    refuse_existing(out_dir, force)
    if source or is_checkpoint(model):
        options = dict(_setting(s) for s in settings)
        size = None if image_size is None else "none" if image_size.lower() == "none" else _image_size(image_size)
        spec = import_checkpoint(model, source, arch=arch, pooling=pooling, image_size=size, **options)
    else:
        if arch or pooling or image_size or settings:
            raise click.UsageError("--arch, --pooling, --image-size and --set apply to .pth checkpoints only")
        spec = read_net(model)
    check_memory(spec, model)
    save_converted(spec, out_dir, source=model, force=force)
    cfg = config_of(spec)
    origin = spec.meta.get("checkpoint", {}).get("from")
    click.echo(
        f"{model} -> {out_dir}: {len(spec.layers)} layers{f' ({origin})' if origin else ''}, method "
        f"{cfg['method'] or '-'}, {'whitened, ' if cfg['whitened'] else ''}output dim {cfg['output_dim']}"
    )


def _setting(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--set")
    return key.strip().replace("-", "_"), value.strip()


def input_description(spec) -> str:
    """What the network takes: MatConvNet's averageImage, or a PyTorch-born network's normalisation and resize."""
    pre = spec.meta.get("preprocess")
    if not pre:
        return f"averageImage(1,1,:) {' '.join(f'{v:g}' for v in spec.average_rgb)}"
    resize = spec.meta.get("resize")
    size = "x".join(map(str, resize["size"])) + f" {resize.get('filter', '')}".rstrip() if resize else "none"
    return f"input RGB 0..1, mean {pre['mean']}, std {pre['std']}, resize {size}"


def layer_table(spec, image_hw: tuple[int, int]) -> list[str]:
    """Rows like ``vl_simplenn_display``: index, name, type, weight shapes, output size."""
    import numpy as np

    from .matconvnet import infer_shapes

    shapes = infer_shapes(spec, image_hw)
    rows = [f"{'#':>3}  {'name':<16} {'type':<22} {'weights':<28} output (H x W x C)"]
    for i, (layer, (h, w, c)) in enumerate(zip(spec.layers, shapes), start=1):
        ws = ", ".join("x".join(map(str, x.shape)) for x in layer.weights) or "-"
        if len(layer.weights) > 4:  # a torch block (attention): its size, not every tensor
            ws = f"{len(layer.weights)} tensors, {sum(int(np.size(x)) for x in layer.weights):,} values"
        rows.append(f"{i:>3}  {layer.name:<16} {layer.type:<22} {ws:<28} {h} x {w} x {c}")
    return rows


@main.command()
@_model_input(dest="model")
@click.option("--image-size", default="480x640", show_default=True, help="HxW input used for output sizes.")
@_friendly
def info(model: Path, image_size: str):
    """Print the layer table of MODEL (.mat or converted folder), like vl_simplenn_display."""
    from .converted import config_of
    from .loading import load_spec

    spec = load_spec(model)
    cfg = config_of(spec)
    meta = spec.meta
    click.echo(f"{model}")
    ckpt = meta.get("checkpoint")
    if isinstance(ckpt, dict):  # a PyTorch-born network: what its checkpoint said of itself
        said = "  ".join(f"{k} {ckpt[k]:.4g}" if isinstance(ckpt[k], float) else f"{k} {ckpt[k]}"
                         for k in ("epoch", "step", "best_score") if k in ckpt)  # fmt: skip
        click.echo(f"a {ckpt.get('from', '?')} checkpoint  {said}".rstrip())
    else:
        click.echo(
            f"netID {meta.get('netID', '-')}  sessionID {meta.get('sessionID', '-')}  epoch {meta.get('epoch', '-')}"
        )
    click.echo(
        f"method {cfg['method'] or '-'}  whitened {'yes' if cfg['whitened'] else 'no'}  "
        f"output dim {cfg['output_dim']}  {input_description(spec)}"
    )
    for row in layer_table(spec, _image_size(image_size)):
        click.echo(row)


@main.command("export-mat")
@_model_input(dest="model")
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), required=True, help="The .mat to write.")
@_mat_version_option
@click.option(
    "--encoding",
    type=click.Choice(["struct", "classdef", "saveobj"]),
    default="struct",
    show_default=True,
    help="struct: struct-ified SimpleNN (hloc layout); classdef/saveobj: "
    "NetVLAD class objects as the release files hold them.",
)
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@_friendly
def export_mat(model: Path, out_path: Path, mat_version: str, encoding: str, force: bool):
    """Write MODEL (converted folder or .mat) as a MatConvNet SimpleNN .mat file."""
    from .loading import load_spec
    from .matconvnet import write_net

    refuse_existing(out_path, force, "output file")
    spec = load_spec(model)
    write_net(spec, out_path, version=mat_version, encoding=encoding)
    click.echo(f"{model} -> {out_path} ({mat_version}, {encoding})")


def _export_options(fn):
    fn = click.option("--force", is_flag=True, help="Replace the output file if it exists.")(fn)
    fn = click.option("--tolerance", type=float, default=1e-4, show_default=True,
                      help="Refuse beyond this max |exported - model| / max |model|.")(fn)  # fmt: skip
    fn = _normalize_option(fn)
    fn = click.option("--dim", type=int, default=None, help="cropToDim in the graph: first K components, L2 again.")(fn)
    fn = click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), required=True,
                      help="The file to write.")(fn)  # fmt: skip
    return _model_input(dest="model")(fn)


def _export(fmt: str, model, out_path, dim, normalize, tolerance, force, opset=None) -> None:
    from .deploy import OPSET, export_model

    meta = export_model(model, out_path, fmt, opset=opset or OPSET, dim=dim, normalize=normalize,
                        tolerance=tolerance, force=force)  # fmt: skip
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in meta["max_relative_difference"].items())
    dim = f"{meta['output_dim']}-D" if meta["output_dim"] else "size-dependent output"
    click.echo(f"{model} -> {out_path} ({fmt}, {dim}; checked with {meta['verified_with']}: "
               f"max relative difference {diffs} <= {meta['tolerance']:g})")  # fmt: skip


@main.command()
@click.argument("names", nargs=-1)
@click.option("--list", "list_them", is_flag=True, help="List the released models and what is here of them.")
@_quiet_option
@_friendly
def fetch(names, list_them, quiet):
    """Download released models by name (checked, resumable) and convert them once; print the folders."""
    from .hub import RELEASES, home, load_release

    if list_them or not names:
        for name, r in RELEASES.items():
            state = "converted" if (home() / "models" / name / "config.json").is_file() else (
                "downloaded" if (home() / "downloads" / r.file).is_file() else "-")  # fmt: skip
            click.echo(f"{name:<46} {state:<10} {r.about}")
        click.echo(f"(in {home()}; NETVLAD_PORT_HOME moves it)")
        return
    for name in names:
        click.echo(load_release(name, progress=not quiet))


@main.command("export-onnx")
@_export_options
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@_friendly
def export_onnx(model, out_path, dim, normalize, tolerance, force, opset):
    """Write MODEL as ONNX (dynamic batch, height, width), checked with onnxruntime before it is written."""
    _export("onnx", model, out_path, dim, normalize, tolerance, force, opset)


@main.command("export-torchscript")
@_export_options
@_friendly
def export_torchscript(model, out_path, dim, normalize, tolerance, force):
    """Write MODEL as TorchScript (torch.jit.load), checked before it is written."""
    _export("torchscript", model, out_path, dim, normalize, tolerance, force)


@main.command()
@_model_input()
@click.option(
    "--images",
    "images",
    type=click.Path(path_type=Path),
    required=True,
    help="A folder (searched recursively) or a text file with one image path per line.",
)
@click.option("-o", "--out", "out", type=click.Path(path_type=Path), required=True, help="OUT.h5, OUT.bin or OUT.npy.")
@click.option("--format", "fmt", type=click.Choice(["h5", "bin", "npy"]), help="Default: from the suffix of --out.")
@click.option("--root", type=click.Path(path_type=Path), help="Root the names in a list file are relative to.")
@click.option("--batch-size", type=int, default=10, show_default=True, help="Images of equal size per batch.")
@_workers_option
@_device_option
@_precision_option
@click.option(
    "--resize-shorter",
    type=int,
    default=None,
    help="vl_imreadjpeg 'Resize', S: shorter side to S (deepIBL's Tokyo 24/7 queries: 640).",
)
@click.option("--dim", type=int, default=None, help="cropToDim: keep the first K components and L2 again.")
@click.option("--half", is_flag=True, help="Store float16 (h5 / npy).")
@_normalize_option
@click.option(
    "--on-error",
    type=click.Choice(["stop", "skip"]),
    default="stop",
    show_default=True,
    help="An unreadable image stops the run, or is skipped and listed in OUT.skipped.txt.",
)
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="onnxruntime: MODEL is a file written by export-onnx (auto: for a .onnx file).")  # fmt: skip
@_quiet_option
@click.option("--force", is_flag=True, help="Replace an output made by another model or with other options.")
@_friendly
def extract(
    model_path,
    images,
    out,
    fmt,
    root,
    batch_size,
    workers,
    device,
    precision,
    resize_shorter,
    dim,
    half,
    normalize,
    on_error,
    backend,
    quiet,
    force,
):
    """Extract descriptors of many images (MATLAB serialAllFeats). Under torchrun the images are split
    across the processes, each writes OUT.parts/rank<r>of<W>.h5, and rank 0 merges them into OUT."""
    from .extract import serial_all_feats, skipped_path
    from .loading import load

    model = load(model_path, normalize=normalize, backend=backend)
    report = serial_all_feats(
        model,
        images,
        out,
        batch_size=batch_size,
        fmt=fmt,
        root=root,
        dim=dim,
        resize_shorter=resize_shorter,
        device=device,
        precision=precision,
        num_workers=workers,
        on_error=on_error,
        half=half,
        progress=not quiet,
        force=force,
    )
    if report.rank != 0:  # under torchrun rank 0 speaks for every rank
        return
    processes = f" x {report.world} processes, merged from {out.name}.parts" if report.world > 1 else ""
    msg = (
        f"{out}: {report.extracted} images in {report.seconds:.1f} s ({report.images_per_second:.1f} img/s, "
        f"{report.device}{processes})"
    )
    if report.already_present:
        msg += f", {report.already_present} already present"
    if report.skipped:
        msg += f", {len(report.skipped)} skipped (listed in {skipped_path(out)})"
    click.echo(msg)


@main.command()
@click.argument("files", nargs=-1, metavar="[MODEL] DUMP", type=click.Path(path_type=Path))
@click.option("--model", "model_opt", type=click.Path(path_type=Path), help="The network (or as MODEL).")
@click.option("--images", type=click.Path(path_type=Path), help="images.mat, when the dump has no 'images'.")
@_normalize_option(text="matconvnet-cpu for dumps made by MATLAB on a CPU (forward only).")
@click.option("--double/--single", default=False, show_default=True, help="Compute in float64 / float32.")
@click.option(
    "--rtol",
    type=float,
    default=1e-4,
    show_default=True,
    help="Per array: max |ours - ref| / max |ref| (activations, dL/dx, dL/dw).",
)
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Descriptors: max abs difference.")
@click.option("--loss-rtol", type=float, default=1e-5, show_default=True, help="SARE losses and dL/dfeats.")
@click.option("--no-gradients", is_flag=True, help="Forward and losses only.")
@_friendly
def parity(files, model_opt, images, normalize, double, rtol, atol, loss_rtol, no_gradients):
    """Compare MODEL with a MATLAB reference DUMP (matlab_ref/make_dump.m), layer by layer."""
    import torch

    if len(files) != (1 if model_opt else 2):
        raise click.UsageError("give the network and the dump: MODEL DUMP, or --model MODEL DUMP")
    model, dump = (model_opt, files[0]) if model_opt else files
    from .loading import load
    from .parity import format_report, load_dump, run_parity

    net = load(model, normalize=normalize).to(torch.float64 if double else torch.float32)
    reference = load_dump(dump, images)
    try:
        checks = run_parity(net, reference, rtol=rtol, atol=atol, loss_rtol=loss_rtol, gradients=not no_gradients)
    except NetVladPortError as exc:
        raise NetVladPortError(f"{dump}: {exc}") from None
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as exc:  # a tampered dump
        raise NetVladPortError(f"{dump}: a field does not fit the network ({type(exc).__name__}: {exc})") from None
    click.echo(format_report(checks))
    failed = sum(not c.passed for c in checks)
    if failed:
        click.echo(f"{dump}: {failed} check(s) beyond tolerance for {model}")
        raise SystemExit(1)


def _losses():
    from .losses import LOSSES

    return LOSSES


def _protocols():
    from .retrieval import PROTOCOLS

    return PROTOCOLS


def _layouts():
    from .datasets.synthetic import LAYOUTS

    return LAYOUTS


class DatasetOption(click.Option):
    """``--dataset``, whose help lists the registered dataset names when help is shown."""

    def __init__(self, *args, prefix: str = "One of", split: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.prefix, self.split = prefix, split

    def get_help_record(self, ctx):
        from .datasets import dataset_names

        self.help = f"{self.prefix}: {dataset_names(self.split)}."
        return super().get_help_record(ctx)


@main.command("test")
@_model_input()
@click.option("--dataset", required=True, cls=DatasetOption)
@click.option("--root", type=click.Path(path_type=Path), help="Dataset root (images/, queries/ ...).")
@click.option("--spec-dir", type=click.Path(path_type=Path), help="Folder of the dbStruct .mat files.")
@click.option("--dim", type=int, default=None, help="cropToDim: evaluate the first K dimensions.")
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Default: results/<dataset>-<its identity>/<model>-<options>: one folder per dataset, model and options.",
)
@click.option("--batch-size", type=int, default=10, show_default=True, help="Images of equal size per batch.")
@_workers_option
@_device_option
@_precision_option
@_normalize_option
@click.option(
    "--resize-shorter",
    "--resize-queries",
    "resize_queries",
    type=int,
    default=None,
    help="Queries' shorter side to S, as deepIBL's Tokyo 24/7 protocol (640); the database is not resized.",
)
@click.option(
    "--protocol",
    type=LazyChoice(_protocols),
    default="matlab",
    show_default=True,
    help="matlab: recall@N over all queries (testFromFn); gcl: over queries with a positive, plus mAP@N.",
)
@click.option("--recall-ns", "--recall-values", "recall_ns", type=str, default=None,
              callback=lambda ctx, param, value: _ints(value) if value else None,
              help="Comma-separated N of recall@N [the protocol's: 1-5,10-100 by 5 for matlab].")  # fmt: skip
@click.option("--positive-dist-threshold", "pos_dist_thr", type=float, default=None,
              help="A VG-format folder's positives radius in metres [25].")  # fmt: skip
@click.option("--num-preds-to-save", type=int, default=0, show_default=True,
              help="Write OUT/preds/<query>.jpg: each query and its first N predictions (green: correct).")  # fmt: skip
@click.option("--save-only-wrong", "--save-only-wrong-preds", "save_only_wrong", is_flag=True,
              help="With --num-preds-to-save: only the queries whose first prediction is wrong.")  # fmt: skip
@_search_options
@click.option(
    "--exact-sample",
    type=int,
    default=1000,
    show_default=True,
    help="With an approximate --index: queries whose recall is also measured exactly (all if fewer).",
)
@click.option(
    "--cluster-major/--no-cluster-major",
    default=None,
    help="Raw VLAD: reorder components cluster-major before PQ [on for PQ indexes].",
)
@click.option("--subtask", default=None,
              help="MSLS: only the images of this subtask_index.csv column (all, summer2winter/s2w, "
                   "winter2summer/w2s, day2night/d2n, night2day/n2d, old2new/o2n, new2old/n2o).")  # fmt: skip
@click.option("--task", type=click.Choice(["im2im", "im2seq", "seq2im", "seq2seq"]), default="im2im",
              show_default=True,
              help="MSLS: queries and database as images or as sequences of seq_info.csv.")  # fmt: skip
@click.option("--seq-length", type=int, default=None, help="MSLS: frames per sequence of the seq tasks (odd, 3+).")
@click.option("--db-panoramas", type=click.Choice(["rank", "drop"]), default=None,
              help="MSLS: database panoramas searched but never positive (rank: GCL, mapillary_sls) or removed "
                   "(drop) [rank with --protocol gcl, else drop].")  # fmt: skip
@click.option("--predictions-out", type=click.Path(path_type=Path), default=None,
              help="Also write MSLS's predictions file (query key, then the keys of the first max(N) "
                   "predictions, per line): what its benchmark server takes for msls-test.")  # fmt: skip
@_quiet_option
@click.option("--force", is_flag=True, help="Replace features in OUT made by another model, with other options or "
              "from other image files.")  # fmt: skip
@_friendly
def test_cmd(model_path, dataset, root, spec_dir, dim, out_dir, batch_size, workers, device, precision, normalize,
             resize_queries, protocol, recall_ns, pos_dist_thr, num_preds_to_save, save_only_wrong, index,
             index_params, max_memory, chunk_size, exact_sample, cluster_major, subtask, task, seq_length,
             db_panoramas, predictions_out, quiet, force):  # fmt: skip
    """Recall@N on a dataset, as MATLAB's testFromFn (all queries count), or as GCL reports it."""
    from .datasets import open_dataset
    from .evaluate import run_evaluation
    from .loading import load
    from .retrieval import evaluation_view

    if num_preds_to_save < 0:
        raise NetVladPortError(f"--num-preds-to-save {num_preds_to_save}: must be 0 or more")
    db = open_dataset(dataset, root, spec_dir, pos_dist_thr=pos_dist_thr)
    db = evaluation_view(db, protocol, subtask=subtask, task=task, seq_length=seq_length, db_panoramas=db_panoramas)
    model = load(model_path, normalize=normalize)
    res = run_evaluation(model, db, out_dir, dim, batch_size, device, resize_queries, quiet, precision=precision,
                         num_workers=workers, protocol=protocol, force=force, recall_ns=recall_ns,
                         num_preds_to_save=num_preds_to_save, save_only_wrong=save_only_wrong, index=index,
                         index_params=index_params, max_memory=max_memory, chunk_size=chunk_size,
                         exact_sample=exact_sample, cluster_major=cluster_major,
                         predictions_out=predictions_out)  # fmt: skip
    out_dir = Path(res.out_dir)
    left = "counted as failures" if res.num_queries == db.num_queries else "left out"
    counts = f"{res.queries_without_positives} without positives, {left}" if res.ground_truth else "no ground truth"
    pca = f", PCA fitted on {res.pca_fit}" if res.pca_fit else ""
    click.echo(f"{db.name}: {res.num_queries} queries ({counts}), {res.dim}-D{pca}, {res.search}, protocol {protocol}")
    click.echo(res.table())
    if predictions_out is not None:
        click.echo(f"predictions (MSLS format, {max(res.recall_ns)} per query) in {predictions_out}")
    if res.exact_sample:
        ex = res.exact_sample
        line = ", ".join(f"R@{n} {ex['recall_at_n'][n] * 100:.2f} exact / {ex['approximate_recall_at_n'][n] * 100:.2f}"
                         for n in ex["recall_at_n"] if n in ("1", "5", "10"))  # fmt: skip
        click.echo(f"exact on {ex['num_queries']} sampled queries: {line}")
    names = ["results.json", "predictions.csv", "pairs.txt"] + ["recall.png"] * res.ground_truth + ["mosaic.png"]
    names += ["preds/"] if num_preds_to_save else []
    click.echo(f"results in {out_dir}: {', '.join(names)}")


@main.command()
@click.option("--db", "db_h5", type=click.Path(path_type=Path, exists=True), required=True,
              help="Database descriptors (hloc h5).")  # fmt: skip
@click.option("--queries", "q_h5", type=click.Path(path_type=Path, exists=True), required=True,
              help="Query descriptors (hloc h5; may be the same file).")  # fmt: skip
@click.option("-k", "--num-matched", "k", type=int, default=20, show_default=True, help="Pairs per query.")
@click.option("--db-prefix", help="Only database names starting with this.")
@click.option("--query-prefix", help="Only query names starting with this.")
@click.option("--db-list", type=click.Path(path_type=Path, exists=True), help="Only the database names listed.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="hloc pairs file: 'query db' lines.")
@_search_options
@click.option("--force", is_flag=True, help="Replace the pairs file if it exists.")
@_friendly
def search(db_h5, q_h5, k, db_prefix, query_prefix, db_list, out, index, index_params, max_memory, chunk_size, force):
    """Top-k database images for each query (hloc's pairs_from_retrieval format)."""
    from .io_utils import atomic_file
    from .retrieval import retrieval_pairs

    refuse_existing(out, force, "output file")
    pairs, where = retrieval_pairs(db_h5, q_h5, k, db_prefix, query_prefix, db_list, index, index_params,
                                   max_memory, chunk_size)  # fmt: skip
    with atomic_file(out) as tmp:
        tmp.write_text("".join(f"{q} {d}\n" for q, d in pairs))
    click.echo(f"{out}: {len(pairs)} pairs, {len({q for q, _ in pairs})} queries ({where})")


@main.command("index")
@click.argument("db_h5", type=click.Path(path_type=Path, exists=True))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="The index (faiss.write_index) and OUT.json beside it (tag, names).")  # fmt: skip
@click.option("--factory", required=True, help="faiss index-factory string: IVF4096,PQ64, HNSW32, OPQ64,IVF4096,PQ64.")
@click.option("--train-size", type=int, default=None, help="Descriptors sampled to train it [64 per IVF list, "
              "at least 50,000].")  # fmt: skip
@click.option("--max-memory", default=None, help="Memory for the whole process, the index aside: the chunks get "
              "what it does not hold already [2GB of chunks beyond it].")  # fmt: skip
@click.option("--chunk-size", type=int, default=None, help="Descriptors per chunk (instead of --max-memory).")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="The network that made them: checked against their tag, and tells raw VLAD's K.")  # fmt: skip
@click.option("--vlad-k", type=int, default=None, help="Raw (unwhitened) VLAD with K clusters, K-fastest.")
@click.option(
    "--cluster-major/--no-cluster-major",
    default=None,
    help="Raw VLAD: reorder components cluster-major before PQ [on for PQ indexes].",
)
@_quiet_option
@click.option("--force", is_flag=True, help="Replace the index if it exists.")
@_friendly
def index_cmd(db_h5, out, factory, train_size, max_memory, chunk_size, model_path, vlad_k, cluster_major, quiet,
              force):  # fmt: skip
    """Build a faiss index of an h5's descriptors: trained on a sample, filled a chunk at a time, saved for
    search/test --index (refused there if the descriptors change)."""
    from .feature_store import h5_names, read_tag
    from .search_index import H5Descriptors, build_index, save_index, vlad_layout

    refuse_existing(out, force, "index")
    tag = read_tag(db_h5, "h5")
    names = sorted(h5_names(db_h5))
    if not names:
        raise NetVladPortError(f"{db_h5}: no global_descriptor datasets")
    db = H5Descriptors(db_h5, names)
    vlad = None
    if model_path is not None:
        from .feature_store import model_fingerprint
        from .loading import load

        model = load(model_path)
        if tag and tag.get("model_sha256") != model_fingerprint(model):
            raise NetVladPortError(f"{db_h5}: descriptors of another model than {model_path}")
        vlad = vlad_layout(model) if not (tag or {}).get("dim") else None
    if vlad_k:
        if db.dim % vlad_k:
            raise NetVladPortError(f"--vlad-k {vlad_k}: does not divide the {db.dim}-D descriptor")
        vlad = (vlad_k, db.dim // vlad_k)
    log = None if quiet else click.echo
    index, info = build_index(db, factory, vlad, cluster_major, train_size, max_memory, chunk_size, log=log)
    save_index(index, info, out, names, tag, db_h5)
    how = ", cluster-major" if info["cluster_major"] else ""
    click.echo(f"{out}: {factory}{how}, {info['count']} x {info['dim']}-D, trained on {info['train_size']} (+ "
               f"{out.name}.json)")  # fmt: skip


@main.command("make-synthetic")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--db-per-split", type=int, default=120, show_default=True, help="Database images per split.")
@click.option("--queries-per-split", type=int, default=60, show_default=True, help="Queries per split.")
@click.option("--size", default="120x160", show_default=True, help="HxW (Pitts: 480x640).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the scenes.")
@click.option("--force", is_flag=True, help="Write into a folder that is not empty.")
@_mat_version_option
@click.option("--layout", type=LazyChoice(_layouts), default="dbstruct", show_default=True,
              help="A registered layout: dbstruct (synthetic_<split>.mat + images/, queries/), or a plug-in's "
                   "(the GCL wing's msls: MSLS's train_val/<city>/ folders).")  # fmt: skip
@click.option("--masks", is_flag=True, help="Cars along the streets and masks/<image>.png with each view's exact "
              "Cityscapes train-ids (for train --guidance ids:OUT/masks).")  # fmt: skip
@_friendly
def make_synthetic_cmd(out, db_per_split, queries_per_split, size, seed, force, mat_version, layout, masks):
    """Write the embedded synthetic place-recognition dataset (train/val/test, or MSLS's train/val)."""
    from .datasets.synthetic import SyntheticConfig, make_synthetic

    if out.exists() and any(out.iterdir()) and not force:
        raise NetVladPortError(f"{out}: folder is not empty (use --force to write into it)")
    cfg = SyntheticConfig(db_per_split=db_per_split, queries_per_split=queries_per_split,
                          image_hw=_image_size(size), seed=seed, masks=masks)  # fmt: skip
    make_synthetic(out, cfg, version=mat_version, layout=layout)
    from .datasets.synthetic import LAYOUTS

    click.echo(f"{out}: {LAYOUTS[layout].about}, {db_per_split} db + {queries_per_split} queries per split")


def _dataset_options(fn):
    fn = click.option("--spec-dir", type=click.Path(path_type=Path), help="Folder of the dbStruct .mat files.")(fn)
    fn = click.option("--root", type=click.Path(path_type=Path), help="Dataset root.")(fn)
    fn = click.option("--dataset", required=True, cls=DatasetOption, prefix="A training split", split="train")(fn)
    return fn


@main.command()
@_model_input(text="A network (.mat or converted folder), or with --layer a MatConvNet ImageNet model file.")
@click.option("--layer", default=None, help="loadNet: crop the ImageNet model at this layer (e.g. conv5_3).")
@click.option("--net-id", type=click.Choice(["vd16", "vd19", "caffe", "places"]), default="vd16", show_default=True,
              help="loadNet's netID: which ImageNet architecture the model file holds.")  # fmt: skip
@_dataset_options
@click.option("--method", default="vlad_preL2_intra", show_default=True, help="addLayers method.")
@click.option("-k", "--k", "k", type=int, default=64, show_default=True, help="Number of clusters K.")
@click.option(
    "--random-images",
    is_flag=True,
    help="Sample descriptors from 500 random images (the original code uses the first 500).",
)
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Where to keep *_traindescs.mat / *_clst.mat.")
@click.option("--split-backbone", default=None, metavar="LAYER",
              help="Cut a torchvision VGG16 backbone block in two before LAYER (e.g. conv3_1), so training can start "
                   "there.")  # fmt: skip
@click.option("--original", type=click.Choice(["stml", "nanne"]), default=None,
              help="The original's start network from a torchvision VGG16 trunk: --method netvlad (Nanne's), split at "
                   "conv3_1 and images resized to 640x480 (stml) or split at conv5_1 (nanne).")  # fmt: skip
@click.option("--keep-masks", default=None, metavar="SRC",
              help="STML's re-clustering: sample only positions kept by these masks (masks:DIR, ids:DIR or h5:FILE, "
                   "as --guidance).")  # fmt: skip
@click.option("--mask-reject", default="vehicle,human", show_default=True,
              help="With --keep-masks ids:DIR: the rejected Cityscapes categories.")  # fmt: skip
@_rng_option
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output network folder.")
@_device_option
@_quiet_option
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@_friendly
def cluster(
    model_path,
    layer,
    net_id,
    dataset,
    root,
    spec_dir,
    method,
    k,
    random_images,
    cache_dir,
    split_backbone,
    original,
    keep_masks,
    mask_reject,
    rng,
    out_dir,
    device,
    quiet,
    force,
):
    """loadNet + getClusters + addLayers: the off-the-shelf NetVLAD network (--method netvlad: Nanne's)."""
    from .converted import save_converted
    from .datasets import open_dataset
    from .loading import load_spec
    from .matconvnet.spec import LAYER_TYPES
    from .networks import add_layers, load_net

    refuse_existing(out_dir, force)
    try:
        spec = load_net(net_id, layer, model_path) if layer else load_spec(model_path)
    except NetVladPortError as exc:
        if layer is None and "unsupported layer type" in str(exc):  # an ImageNet model with its classifier
            raise NetVladPortError(
                str(exc)
                if "cluster --layer" in str(exc)
                else f"{exc}; an ImageNet model? crop it with --layer conv5_3 (loadNet)"
            ) from None
        raise
    done = [l for l in spec.layers if l.type == "netvlad" or ((t := LAYER_TYPES.get(l.type)) is not None and t.token)]
    if done:
        raise NetVladPortError(
            f"{model_path}: already has an aggregation layer ('{done[0].name}', {done[0].type}); cluster starts "
            f"from a trunk: an ImageNet model with --layer"
        )
    db = open_dataset(dataset, root, spec_dir)
    if original:
        from .clusters import ORIGINAL_STARTS

        method, split_backbone, resize = (
            "netvlad",
            ORIGINAL_STARTS[original]["split"],
            ORIGINAL_STARTS[original]["resize"],
        )
        if resize:
            spec.meta["resize"] = dict(resize)
    if split_backbone:
        from .layers.backbones import split_backbone as split

        spec = split(spec, split_backbone)
    sample = {"first_images": not random_images, "rng": rng, "device": device, "progress": not quiet}
    if keep_masks:
        from .clusters import MASK_SOURCES

        sample["keep"] = MASK_SOURCES["guidance"](keep_masks, db, [c for c in mask_reject.split(",") if c])
    if method == "netvlad":
        from .clusters import nanne_netvlad

        spec = nanne_netvlad(spec, db, k=k, cache_dir=cache_dir, say=click.echo, **sample)
    else:
        spec = add_layers(spec, method, db_train=db, k=k, cache_dir=cache_dir, say=click.echo, **sample)
    save_converted(spec, out_dir, force=force)
    click.echo(f"{out_dir}: {len(spec.layers)} layers, sessionID {spec.meta['sessionID']}")


@main.command()
@_model_input()
@_dataset_options
@click.option("--pca-dim", type=int, default=4096, show_default=True, help="pcaDim: output dimension.")
@click.option("--no-white", is_flag=True, help="PCA without whitening.")
@click.option("--n-train-cap", type=int, default=10000, show_default=True, help="nTrainCap: at most this many images.")
@click.option("--again", is_flag=True, help="Add (W)PCA to a network that has one already (MATLAB would).")
@click.option("--fit-on", type=click.Choice(["train", "database"]), default="train", show_default=True,
              help="train: addPCA on --dataset, a training split (nTrainCap images). database: GCL's whitening "
                   "(apply_pca.py) fitted on every database image of --dataset, the evaluation set.")  # fmt: skip
@_device_option
@_rng_option
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output network folder.")
@_workers_option
@_quiet_option
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@_friendly
def pca(model_path, dataset, root, spec_dir, pca_dim, no_white, n_train_cap, again, fit_on, device, rng, out_dir,
        workers, quiet, force):  # fmt: skip
    """addPCA: learn (whitened) PCA on the training database (or, --fit-on database, GCL's whitening on an
    evaluation database) and append WPCA + finalL2."""
    from .converted import save_converted
    from .datasets import open_dataset
    from .loading import load_spec
    from .pca import add_gcl_whitening, add_pca
    from .retrieval import evaluation_view

    refuse_existing(out_dir, force)
    db = open_dataset(dataset, root, spec_dir)
    if fit_on == "database":
        if no_white:
            raise NetVladPortError("--no-white: GCL's database fit always whitens (apply_pca.py:52-71)")
        db = evaluation_view(db, "gcl")  # GCL fits on every database image, panoramas included (apply_pca.py:186-190)
        spec = add_gcl_whitening(load_spec(model_path), db, pca_dim, f"database:{dataset}", again=again,
                                 device=device, num_workers=workers, progress=not quiet)  # fmt: skip
        save_converted(spec, out_dir, force=force)
        click.echo(f"{out_dir}: {len(spec.layers)} layers, sessionID {spec.meta['sessionID']}, whitening fitted on "
                   f"the {db.num_images} database images of {db.name}")  # fmt: skip
        return
    spec = add_pca(
        load_spec(model_path),
        db,
        pca_dim=pca_dim,
        do_white=not no_white,
        n_train_cap=n_train_cap,
        again=again,
        device=device,
        rng=rng,
        num_workers=workers,
        progress=not quiet,
    )
    spec.meta["pca_fit"] = "train"
    save_converted(spec, out_dir, force=force)
    click.echo(f"{out_dir}: {len(spec.layers)} layers, sessionID {spec.meta['sessionID']}")


def _floats(value: str | None) -> tuple[float, ...]:
    return tuple(float(v) for v in value.split(",") if v.strip()) if value else ()


def _ints(value: str | None) -> tuple[int, ...]:
    return tuple(int(float(v)) for v in _floats(value))


def _names(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


# trainWeakly / train*.m options under their MATLAB names in kebab-case -> (TrainOptions field, type, help);
# the help's [default] is read from TrainOptions when help is shown
TRAIN_OPTIONS = {
    "--batch-size": ("batch_size", int, "batchSize: tuples per SGD step"),
    "--lr-down-freq": ("lr_down_freq", int, "lrDownFreq: epochs between lr drops"),
    "--lr-down-factor": ("lr_down_factor", float, "lrDownFactor"),
    "--weight-decay": ("weight_decay", float, "weightDecay"),
    "--momentum": ("momentum", float, "momentum"),
    "--back-prop-to-layer": ("back_prop_to_layer", str, "backPropToLayer: name or 1-based index"),
    "--fix-layers": ("fix_layers", _names, "fixLayers: comma-separated layer names not updated"),
    "--n-neg-choice": ("n_neg_choice", int, "nNegChoice: random negatives per query"),
    "--n-neg-cap": ("n_neg_cap", int, "nNegCap: negatives per tuple"),
    "--n-neg-cache": ("n_neg_cache", int, "nNegCache: hard negatives remembered per query"),
    "--margin": ("margin", float, "margin: triplet margin on squared distances, and the rank loss"),
    "--jitter-scale": ("jitter_scale", _floats, "jitterScale: comma-separated scales, one drawn per tuple"),
    "--save-frequency": ("save_frequency", int, "saveFrequency: queries between checkpoints"),
    "--comp-feats-frequency": ("comp_feats_frequency", int, "compFeatsFrequency: queries between refreshes"),
    "--compute-batch-size": ("compute_batch_size", int, "computeBatchSize"),
    "--epoch-test-frequency": ("epoch_test_frequency", int, "epochTestFrequency (the last epoch is always tested)"),
    "--n-test-sample": ("n_test_sample", int, "nTestSample: validation queries for recall"),
    "--n-test-rank-sample": ("n_test_rank_sample", int, "nTestRankSample: queries for the rank loss"),
    "--recall-ns": ("recall_ns", _ints, "recallNs: comma-separated N"),
    "--start-epoch": ("start_epoch", int, "startEpoch: with --model the network of epoch startEpoch-1"),
    "--db-checkpoint0": ("db_checkpoint0", str, "dbCheckpoint0: the start network's train db features (.bin)"),
    "--q-checkpoint0": ("q_checkpoint0", str, "qCheckpoint0: ... train query features (.bin)"),
    "--db-checkpoint0-val": ("db_checkpoint0_val", str, "dbCheckpoint0val: ... val db features (.bin)"),
    "--q-checkpoint0-val": ("q_checkpoint0_val", str, "qCheckpoint0val: ... val query features (.bin)"),
    "--pca-dim": ("pca_dim", int, "addPCA on the best epoch; 0: skip"),
    "--trunk-cache": ("trunk_cache", click.Choice(["auto", "memory", "disk", "none"]),
                      "keep the frozen layers' outputs (auto: memory, else disk); none recomputes them"),
    "--trunk-dir": ("trunk_dir", str, "where a disk trunk cache goes (default OUT/trunk_cache)"),
    "--precision": ("precision", LazyChoice(_precisions),
                    "fp32 is exact; tf32 (GPU matmuls and convolutions) or bf16/fp16 autocast are opt-in"),
    "--device": ("device", str, "auto, cpu, cuda or cuda:N"),
    "--rng": ("rng", click.Choice(RNGS), "random draws: MATLAB's generator and calls (rng/randperm/randsample), "
              "or numpy's"),
    "--attention": ("attention", _names, "modules inserted before the aggregation, in order (registered names, "
                    "e.g. the sTML wing's deattention-v1,se)"),
    "--step-queries": ("step_queries", int, "GCL's steps: an epoch is one step of this many queries, one pair each, "
                       "validated on every val query (the gcl recipe: 10000); 0: MATLAB's epochs"),
    "--forward": ("forward", click.Choice(["tuple", "batch", "siamese"]), "what one forward pass holds: each tuple "
                  "(MATLAB), the whole batch (STML) or 2 queries / 2 partners (GCL)"),
    "--lr-schedule": ("lr_schedule", click.Choice(["matlab", "steplr"]), "when the lr drops: MATLAB's rule (epochs "
                      "lrDownFreq+1, 2 lrDownFreq+1, ...; the cache interval grows with it) or torch's StepLR "
                      "stepped with the epoch (epochs lrDownFreq, 2 lrDownFreq, ...: Nanne)"),
    "--patience": ("patience", int, "stop after more than patience / epochTestFrequency validations without a new "
                   "best val recall@select-by (Nanne, STML: 10); 0: off"),
    "--select-by": ("select_by", int, "the best epoch: max val recall@N (getBestEpoch: 5; STML: 1)"),
    "--val-protocol": ("val_protocol", LazyChoice(_protocols), "the protocol of the validation recalls (GCL's: "
                       "gcl)"),
}  # fmt: skip
TRAIN_FLAGS = {  # on/off options
    "exclude_very_hard": ("--exclude-very-hard", "excludeVeryHard (trainWeakly)"),
    "jitter_flip": ("--jitter-flip", "jitterFlip: flip a tuple with probability 0.5"),
    "trunk_fp16": ("--trunk-fp16", "store the frozen layers' outputs in float16 (opt-in, inexact)"),
}
PLUGIN_KINDS = {"str": str, "float": float, "int": int}


class TrainOption(click.Option):
    """A training option whose help ends with its MATLAB default, read from ``TrainOptions``."""

    def get_help_record(self, ctx):
        from dataclasses import fields

        from .train import TrainOptions

        default = {f.name: f.default for f in fields(TrainOptions)}.get(self.name)
        if default not in (None, "", ()) and not self.help.endswith("]"):
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            self.help = f"{self.help} [{shown}]"
        return super().get_help_record(ctx)


def _list_option(flag: str, field: str, convert, text: str, cls=click.Option):
    def parse(ctx, param, value):
        return None if value is None else convert(value)

    return click.option(flag, field, cls=cls, type=str, default=None, callback=parse, help=text)


def _train_options(fn):
    for flag, (field, kind, text) in reversed(TRAIN_OPTIONS.items()):
        if isinstance(kind, (type, click.ParamType)):
            fn = click.option(flag, field, cls=TrainOption, type=kind, default=None, help=text + ".")(fn)
        else:  # a list given comma-separated
            fn = _list_option(flag, field, kind, text + ".", TrainOption)(fn)
    for field, (flag, text) in TRAIN_FLAGS.items():
        fn = click.option(flag, field, is_flag=True, default=None, help=text + ".")(fn)
    return click.option("--test0/--no-test0", "test0", default=None, help="test0: evaluate the start network [on].")(fn)


def _plugin_option(option) -> click.Option:
    """The click option of a plug-in's training option (``train.options.register_option``)."""
    kind = option.kind
    if kind == "flag":
        return click.Option([option.flag, option.name], is_flag=True, default=None, help=option.help + ".")
    if kind == "names":
        return click.Option([option.flag, option.name], type=str, default=None, help=option.help + ".",
                            callback=lambda ctx, param, value: None if value is None else _names(value))  # fmt: skip
    kind = click.Choice(list(kind)) if isinstance(kind, (tuple, list)) else PLUGIN_KINDS[kind]
    return click.Option([option.flag, option.name], type=kind, default=None, help=option.help + ".")


class TrainCommand(click.Command):
    """``train`` with the plug-ins' options added when it runs or shows help (never at import)."""

    def get_params(self, ctx):
        from .train.options import OPTIONS

        params = super().get_params(ctx)
        return params[:-1] + [_plugin_option(o) for _, o in OPTIONS.items()] + params[-1:]  # --help stays last


def _recipes():
    from .train import RECIPES

    return RECIPES


@main.command(cls=TrainCommand)
@click.option("--dataset", help="A family with train and val splits: pitts30k, pitts250k, tokyoTM, synthetic, msls, "
              "or one you registered.")  # fmt: skip
@click.option("--train-spec", type=click.Path(path_type=Path), help="Train on this dbStruct .mat (with --val-spec).")
@click.option("--val-spec", type=click.Path(path_type=Path), help="Validate on this dbStruct .mat.")
@click.option("--root", type=click.Path(path_type=Path), help="Dataset root.")
@click.option("--spec-dir", type=click.Path(path_type=Path), help="Folder of the dbStruct .mat files.")
@_model_input(required=False, text="The start network (netvlad-port cluster's output); not needed with --resume.")
@click.option("--recipe", type=LazyChoice(_recipes), default=None, help="The options a published run used "
              "(netvlad_port.train.recipes); options given here override it. Default: the dataset family's, "
              "else deepibl.")  # fmt: skip
@click.option("--loss", type=LazyChoice(_losses), default=None, help="A registered loss [the recipe's].")
@click.option("--loss-param", "loss_params", multiple=True, metavar="NAME=VALUE",
              help="A keyword hyperparameter of the loss (repeatable), e.g. margin=0.5.")  # fmt: skip
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="The run's folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--lr", "--learning-rate", "learning_rate", type=float, default=None,
              help="learningRate [the recipe's: Pitts30k 0.001, Pitts250k/TokyoTM 0.0001].")  # fmt: skip
@click.option("--epochs", "--n-epoch", "n_epoch", cls=TrainOption, type=int, default=None, help="nEpoch.")
@_train_options
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint_latest (--epochs may extend the run).")
@click.option("--force", is_flag=True, help="Start again in an OUT that holds a run.")
@_friendly
def train(dataset, train_spec, val_spec, root, spec_dir, model_path, recipe, loss, loss_params, out_dir, quiet, resume,
          force, **options):  # fmt: skip
    """Train as trainWeakly / deepIBL's train*.m (netvlad_port.train.train); resumable; multi-process under
    torchrun. Each option is the MATLAB option of the same name (docs/matlab.md#training-options); options
    not given come from the recipe, then from MATLAB's defaults shown here."""
    from .train import train as run_training

    options = {k: v for k, v in options.items() if v is not None}
    if options.get("back_prop_to_layer", "").isdigit():
        options["back_prop_to_layer"] = int(options["back_prop_to_layer"])
    if loss_params:
        options["loss_params"] = _loss_params(loss_params)
    if loss is not None:
        options["loss"] = loss
    return run_training(None, None, model_path, out_dir, dataset=dataset, train_spec=train_spec, val_spec=val_spec,
                        root=root, spec_dir=spec_dir, recipe=recipe, resume=resume, force=force, progress=not quiet,
                        log=click.echo, **options)  # fmt: skip


def _loss_params(pairs) -> dict:
    out = {}
    for item in pairs:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise NetVladPortError(f"--loss-param {item!r}: expected NAME=VALUE")
        try:
            out[name] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[name] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def _demos():
    from .demo import DEMOS

    return DEMOS


@main.command()
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path("demo"), show_default=True,
              help="Where everything goes.")  # fmt: skip
@click.option("--recipe", type=LazyChoice(_demos), default="sare-ind", show_default=True,
              help="sare-ind: deepIBL's SARE (dbStruct layout); gcl: GCL's VGG-GeM (MSLS layout); stml: STML's "
              "triplet baseline vs de-attention + sTML (dbStruct layout with masks).")  # fmt: skip
@click.option("--epochs", type=int, default=None, help="Training epochs (0: no training) [8; GCL 20].")
@click.option("--force", is_flag=True, help="Start again in an existing folder.")
@_friendly
def demo(out_dir: Path, recipe: str, epochs: int | None, force: bool):
    """The whole job on embedded synthetic data: dataset, MatConvNet networks, clusters, convert,
    extract, evaluate, train, (PCA whitening,) evaluate again; prints recall@N (and mAP@K) before
    and after."""
    from .demo import run_demo

    run_demo(out_dir, recipe, epochs, force, say=click.echo)


if __name__ == "__main__":
    main()
