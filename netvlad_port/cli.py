"""``netvlad-port``: the command line. Thin wrappers around the package API."""
from __future__ import annotations

import functools
from pathlib import Path

import click

from . import __version__
from .errors import NetVladPortError


def _friendly(fn):
    """Report our errors as one line (exit 1), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NetVladPortError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:  # e.g. `netvlad-port info m.mat | head`
            return None
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from None

    return wrapper


def _image_size(value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
        return h, w
    except ValueError:
        raise click.BadParameter(f"expected HxW such as 480x640, got {value!r}") from None


@click.group()
@click.version_option(__version__, prog_name="netvlad-port")
def main():
    """Exact PyTorch port of MATLAB/MatConvNet NetVLAD + SARE."""


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output folder (model.safetensors + config.json).")
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@_friendly
def convert(model: Path, out_dir: Path, force: bool):
    """Convert a MatConvNet MODEL.mat (any encoding) into a folder of safetensors + JSON."""
    from .converted import config_of, save_converted
    from .matconvnet import read_net

    if out_dir.exists() and not force:
        raise NetVladPortError(f"{out_dir}: output folder exists (use --force to overwrite)")
    spec = read_net(model)
    save_converted(spec, out_dir, source=model, force=force)
    cfg = config_of(spec)
    click.echo(f"{model} -> {out_dir}: {len(spec.layers)} layers, method {cfg['method'] or '-'}, "
               f"{'whitened, ' if cfg['whitened'] else ''}output dim {cfg['output_dim']}")


def layer_table(spec, image_hw: tuple[int, int]) -> list[str]:
    """Rows like ``vl_simplenn_display``: index, name, type, weight shapes, output size."""
    from .matconvnet import infer_shapes

    shapes = infer_shapes(spec, image_hw)
    rows = [f"{'#':>3}  {'name':<16} {'type':<22} {'weights':<28} output (H x W x C)"]
    for i, (layer, (h, w, c)) in enumerate(zip(spec.layers, shapes), start=1):
        ws = ", ".join("x".join(map(str, x.shape)) for x in layer.weights) or "-"
        rows.append(f"{i:>3}  {layer.name:<16} {layer.type:<22} {ws:<28} {h} x {w} x {c}")
    return rows


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--image-size", default="480x640", show_default=True, help="HxW input used for output sizes.")
@_friendly
def info(model: Path, image_size: str):
    """Print the layer table of MODEL (.mat or converted folder), like vl_simplenn_display."""
    from . import load_spec
    from .converted import config_of

    spec = load_spec(model)
    cfg = config_of(spec)
    meta = spec.meta
    click.echo(f"{model}")
    click.echo(f"netID {meta.get('netID', '-')}  sessionID {meta.get('sessionID', '-')}  "
               f"epoch {meta.get('epoch', '-')}")
    click.echo(f"method {cfg['method'] or '-'}  whitened {'yes' if cfg['whitened'] else 'no'}  "
               f"output dim {cfg['output_dim']}  averageImage(1,1,:) "
               f"{' '.join(f'{v:g}' for v in spec.average_rgb)}")
    for row in layer_table(spec, _image_size(image_size)):
        click.echo(row)


@main.command("export-mat")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_path", type=click.Path(path_type=Path), required=True)
@click.option("--version", "mat_version", type=click.Choice(["v7", "v7.3"]), default="v7", show_default=True)
@click.option("--encoding", type=click.Choice(["struct", "classdef", "saveobj"]), default="struct",
              show_default=True, help="struct: struct-ified SimpleNN (hloc layout); classdef/saveobj: "
                                      "NetVLAD class objects as the release files hold them.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@_friendly
def export_mat(model: Path, out_path: Path, mat_version: str, encoding: str, force: bool):
    """Write MODEL (converted folder or .mat) as a MatConvNet SimpleNN .mat file."""
    from . import load_spec
    from .matconvnet import write_net

    if out_path.exists() and not force:
        raise NetVladPortError(f"{out_path}: output file exists (use --force to overwrite)")
    spec = load_spec(model)
    write_net(spec, out_path, version=mat_version, encoding=encoding)
    click.echo(f"{model} -> {out_path} ({mat_version}, {encoding})")


@main.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path), required=True,
              help="A MatConvNet .mat (any encoding) or a converted folder.")
@click.option("--images", "images", type=click.Path(path_type=Path), required=True,
              help="A folder (searched recursively) or a text file with one image path per line.")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="OUT.h5, OUT.bin or OUT.npy.")
@click.option("--format", "fmt", type=click.Choice(["h5", "bin", "npy"]), help="Default: from the suffix of --out.")
@click.option("--root", type=click.Path(path_type=Path), help="Root the names in a list file are relative to.")
@click.option("--batch-size", type=int, default=10, show_default=True, help="Images of equal size per batch.")
@click.option("--workers", type=int, default=None, help="Decoding processes (default min(4, CPUs)).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="fp32 is exact; the others are opt-in GPU speed-ups.")
@click.option("--resize-shorter", type=int, default=None,
              help="vl_imreadjpeg 'Resize', S: shorter side to S (deepIBL's Tokyo 24/7 queries: 640).")
@click.option("--dim", type=int, default=None, help="cropToDim: keep the first K components and L2 again.")
@click.option("--half", is_flag=True, help="Store float16 (h5 / npy).")
@click.option("--normalize", type=click.Choice(["exact", "matconvnet-cpu"]), default="exact", show_default=True)
@click.option("--on-error", type=click.Choice(["stop", "skip"]), default="stop", show_default=True,
              help="An unreadable image stops the run, or is skipped and listed in OUT.skipped.txt.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly
def extract(model_path, images, out, fmt, root, batch_size, workers, device, precision, resize_shorter, dim, half,
            normalize, on_error, quiet):
    """Extract descriptors of many images (MATLAB serialAllFeats)."""
    from . import load
    from .extract import serial_all_feats, skipped_path

    report = serial_all_feats(load(model_path, normalize=normalize), images, out, batch_size=batch_size, fmt=fmt,
                              root=root, dim=dim, resize_shorter=resize_shorter, device=device, precision=precision,
                              num_workers=workers, on_error=on_error, half=half, progress=not quiet)
    msg = f"{out}: {report.extracted} images in {report.seconds:.1f} s ({report.images_per_second:.1f} img/s, " \
          f"{report.device})"
    if report.already_present:
        msg += f", {report.already_present} already present"
    if report.skipped:
        msg += f", {len(report.skipped)} skipped (listed in {skipped_path(out)})"
    click.echo(msg)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("dump", type=click.Path(path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), help="images.mat, when the dump has no 'images'.")
@click.option("--normalize", type=click.Choice(["exact", "matconvnet-cpu"]), default="exact", show_default=True,
              help="matconvnet-cpu for dumps made by MATLAB on a CPU (forward only).")
@click.option("--double/--single", default=False, show_default=True, help="Compute in float64 / float32.")
@click.option("--rtol", type=float, default=1e-4, show_default=True,
              help="Per array: max |ours - ref| / max |ref| (activations, dL/dx, dL/dw).")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Descriptors: max abs difference.")
@click.option("--loss-rtol", type=float, default=1e-5, show_default=True, help="SARE losses and dL/dfeats.")
@click.option("--no-gradients", is_flag=True, help="Forward and losses only.")
@_friendly
def parity(model: Path, dump: Path, images, normalize, double, rtol, atol, loss_rtol, no_gradients):
    """Compare MODEL with a MATLAB reference DUMP (matlab_ref/make_dump.m), layer by layer."""
    import torch

    from . import load
    from .parity import format_report, load_dump, run_parity

    net = load(model, normalize=normalize).to(torch.float64 if double else torch.float32)
    checks = run_parity(net, load_dump(dump, images), rtol=rtol, atol=atol, loss_rtol=loss_rtol,
                        gradients=not no_gradients)
    click.echo(format_report(checks))
    if not all(c.passed for c in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
