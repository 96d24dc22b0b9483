"""Compare a model with a MATLAB reference dump, layer by layer (``netvlad-port parity``).

A dump has the field layout of ``tests/data/parity`` (its README; written by the original code or by
``matlab_ref/make_dump.m``): ``acts``, ``desc_test``, ``feats``, ``sare_all``, ``sare_variant``,
``dzdx``, ``dzdw``, ``sgd``, ``train`` and, for our own dumps, ``images``. Errors are max |ours - ref| /
max |ref| per array ("rel"), or max abs for descriptors ("abs").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torch

from .errors import NetFormatError
from .layers import Normalize, matlab_flatten
from .losses import LOSSES, tuple_loss
from .matconvnet.mat5 import check_mat5
from .matconvnet.spec import numbers
from .train.options import MOMENTUM, WEIGHT_DECAY

SGD_WEIGHTS_RTOL, SGD_MOMENTUM_RTOL = 1e-6, 1e-4


@dataclass
class Check:
    group: str  # forward | descriptor | loss | dzdy | dzdx | dzdw | sgd
    name: str
    error: float
    tol: float
    measure: str = "rel"
    absent: bool = False  # the dump holds no (or an empty) reference for it: reported, not checked
    note: str = ""  # why it failed, where a number does not say it (shapes that differ, a hint)

    @property
    def passed(self) -> bool:
        return self.absent or bool(self.error <= self.tol)


def compare(group: str, name: str, ours, ref, tol: float, measure: str = "rel") -> Check:
    """One check: ``ours()`` (computed only when needed) against ``ref``, which may be absent or empty
    (generators store large tensors they did not save as empty arrays)."""
    if ref is None or np.size(ref) == 0:
        return Check(group, name, float("nan"), tol, measure, absent=True)
    if np.asarray(ref).dtype.kind not in "biuf":
        raise NetFormatError(f"{group} '{name}': the dump's value is not numbers ({np.asarray(ref).dtype})")
    ours, ref = np.asarray(ours(), np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape and [d for d in ours.shape if d != 1] == [d for d in ref.shape if d != 1]:
        ref = ref.reshape(ours.shape)  # squeezed singleton dimensions only
    if ours.shape != ref.shape:
        return Check(group, name, float("inf"), tol, measure, note=shapes_differ(ours.shape, ref.shape))
    if measure == "abs":
        return Check(group, name, float(np.abs(ours - ref).max()) if ref.size else 0.0, tol, measure)
    return Check(group, name, rel_error(ours, ref), tol, measure)


def shapes_differ(ours: tuple, ref: tuple) -> str:
    return f"the shapes differ: ours {'x'.join(map(str, ours))}, the dump's {'x'.join(map(str, ref))}"


def rel_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    scale = np.abs(ref).max() if ref.size else 0.0
    diff = np.abs(ours - ref).max() if ref.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def to_matlab(t: torch.Tensor) -> np.ndarray:
    """N x C x H x W tensor -> MATLAB's H x W x C x N array."""
    return t.detach().cpu().double().permute(2, 3, 1, 0).numpy()


def _cells(v) -> list:
    return list(np.asarray(v, dtype=object).ravel(order="F"))


def _squeeze4(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(a.shape + (1,) * (4 - a.ndim)) if a.ndim < 4 else a


def _loadmat(path: Path, what: str) -> dict:
    if not path.is_file():
        raise NetFormatError(f"{path}: no such file")
    check_mat5(path)
    try:
        return scipy.io.loadmat(path)
    except Exception as exc:
        raise NetFormatError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc})") from None


def load_dump(path: str | os.PathLike, images: str | os.PathLike | None = None) -> dict:
    """Read a dump; images come from its ``images`` field, ``images=``, or a sibling ``images.mat``."""
    path = Path(path)
    dump = _loadmat(path, "dump")
    if "images" not in dump:
        img_path = Path(images) if images else path.with_name("images.mat")
        if not img_path.is_file():
            raise NetFormatError(f"{path}: the dump has no 'images' and {img_path} does not exist (use --images)")
        holder = _loadmat(img_path, "images")
        if "images" not in holder:
            raise NetFormatError(f"{img_path}: no variable 'images'")
        dump["images"] = holder["images"]
    try:
        _images(dump)
    except NetFormatError as exc:
        raise NetFormatError(f"{path}: {exc}") from None
    return dump


def _images(dump: dict) -> torch.Tensor:
    """The dump's H x W x 3 x N images as N x 3 x H x W float32, after checking its fields are there."""
    for key in ("images", "acts", "desc_test"):
        if key not in dump:
            raise NetFormatError(f"the dump has no field '{key}'")
    images = np.asarray(dump["images"])
    if images.dtype.kind not in "biuf" or images.ndim not in (3, 4) or images.shape[2] != 3 or not images.size:
        raise NetFormatError(f"'images' must be H x W x 3 x N numbers, got {images.dtype} {images.shape}")
    return torch.from_numpy(_squeeze4(images.astype(np.float32))).permute(3, 2, 0, 1)


def _struct(v, what: str):
    """A MATLAB struct's (first) element; None for an absent field; anything else is refused."""
    if v is None:
        return None
    if isinstance(v, np.ndarray) and v.dtype.names and v.size:
        return v.ravel()[0]
    raise NetFormatError(f"'{what}' is not a struct (got {type(v).__name__} {getattr(v, 'dtype', '')})")


def _field(struct, name: str, what: str):
    if name not in (struct.dtype.names or ()):
        raise NetFormatError(f"'{what}' has no field '{name}'")
    return struct[name]


def _scalar(struct, name: str, what: str, minimum: float | None = None, integral: bool = False) -> float:
    """One real, finite number of a struct field (``>= minimum``, whole when asked)."""
    values = numbers(_field(struct, name, what), f"'{what}.{name}'", minimum, integral)
    if len(values) != 1:
        raise NetFormatError(f"'{what}.{name}': expected one number, got {len(values)} values")
    return values[0]


def _loss(value, what: str):
    """The loss a MATLAB training file name (``trainGaussKernalInd``) stands for."""
    a = np.asarray(value).ravel()
    name = str(a[0]) if a.size and a.dtype.kind in "US" else ""
    entry = next((e for _, e in LOSSES.items() if name and e.matlab == name), None)
    if entry is None:
        known = ", ".join(sorted(e.matlab for _, e in LOSSES.items() if e.matlab))
        label = f"{name!r}:" if name else "is empty or not text:"
        raise NetFormatError(f"'{what}' {label} no loss mirrors that MATLAB file (one of {known})")
    return entry


def _feats(value) -> torch.Tensor:
    """deepIBL's D x N ``feats`` (query, positive, negatives) as N x D float64 rows."""
    numbers(value, "'feats'")
    a = np.asarray(value, np.float64)
    if a.ndim != 2 or a.shape[1] < 3:
        raise NetFormatError(f"'feats' must be D x N with N >= 3 (query, positive, negatives), got shape {a.shape}")
    return torch.from_numpy(a.T.copy()).requires_grad_()


def run_parity(
    model, dump: dict, rtol: float = 1e-4, atol: float = 1e-5, loss_rtol: float = 1e-5, gradients: bool = True
) -> list[Check]:
    """Forward (every layer, descriptors), the SARE losses from the dump's ``feats``, the backward
    pass and the SGD step where the dump has them."""
    checks: list[Check] = []
    dtype = next(model.parameters()).dtype
    images = _images(dump)
    names = ["input"] + model.names
    ref_acts = _cells(dump["acts"])
    backward = gradients and "dzdw" in dump and model.normalize_mode == "exact"
    with torch.set_grad_enabled(backward):
        x0 = model.prepare(images).requires_grad_(backward)
        acts = [x0]
        for layer in model.layers:
            acts.append(layer(acts[-1]))
            if backward:
                acts[-1].retain_grad()
    if len(ref_acts) != len(acts):
        raise NetFormatError(f"the dump has {len(ref_acts)} activations, the model {len(acts)} (layers + 1)")
    for name, ours, ref in zip(names, acts, ref_acts):
        ref = _squeeze4(ref) if np.size(ref) else None
        checks.append(compare("forward", name, lambda ours=ours: to_matlab(ours), ref, rtol))
        if checks[-1].note:  # another network, or other images: every number after it would be inf
            what = "the mean-subtracted input" if name == "input" else f"layer '{name}'"
            raise NetFormatError(f"{what}: {checks[-1].note} (acts); the dump was made with another network "
                                 f"or other images")  # fmt: skip
    normalize_hint(model, acts, ref_acts, checks[-len(acts) :])
    desc = matlab_flatten(acts[-1]).detach().double().numpy().T
    checks.append(compare("descriptor", "desc_test", lambda: desc, dump.get("desc_test"), atol, "abs"))

    variants = _struct(dump.get("sare_all"), "sare_all")
    if variants is not None and "feats" in dump:
        feats = _feats(dump["feats"])
        for v in variants.dtype.names:
            ref = _struct(variants[v], f"sare_all.{v}")
            loss = tuple_loss(_loss(v, "sare_all"), feats)
            (dzdy,) = torch.autograd.grad(loss, feats)
            if np.size(_field(ref, "loss", f"sare_all.{v}")):
                ref_loss = _scalar(ref, "loss", f"sare_all.{v}")
                checks.append(Check("loss", v, abs(loss.item() - ref_loss) / max(abs(ref_loss), 1e-30), loss_rtol))
            dzdy_ref = _field(ref, "dzdy", f"sare_all.{v}")
            checks.append(compare("dzdy", v, lambda dzdy=dzdy: dzdy.numpy().T, dzdy_ref, loss_rtol))

    if backward:
        train = _struct(dump.get("train"), "train")
        n_layers = len(model.layers)
        if train is not None:
            n_layers = int(_scalar(train, "num_layers", "train", minimum=1, integral=True))
            if n_layers > len(model.layers):
                raise NetFormatError(f"'train.num_layers' {n_layers}: the model has {len(model.layers)} layers")
        loss_entry = _loss(dump.get("sare_variant", ["trainGaussKernalInd"]), "sare_variant")
        if "dzdx" not in dump:
            raise NetFormatError("the dump has 'dzdw' but no 'dzdx' (the backward pass is checked from both)")
        feats = matlab_flatten(acts[n_layers]).to(dtype)
        tuple_loss(loss_entry, feats).backward()
        for i, ref in enumerate(_cells(dump["dzdx"])[: len(acts)]):
            ref = np.asarray(ref)
            if acts[i].grad is None:
                continue  # below the layers the dump trained
            ours = to_matlab(acts[i].grad)
            if ref.size and ours.size == ref.size and ours.shape != _squeeze4(ref).shape:  # e.g. D x N dzdy
                ours, ref = ours.reshape(-1, order="F"), ref.reshape(-1, order="F")
            ref = _squeeze4(ref) if ref.ndim > 2 else ref
            checks.append(compare("dzdx", names[i], lambda ours=ours: ours, ref, rtol))
        sgd = _struct(dump.get("sgd"), "sgd")
        if sgd is not None:
            step = {"num_pairs": int(_scalar(sgd, "thisBatchSize", "sgd", minimum=1, integral=True)),
                    "lr": _scalar(sgd, "lr", "sgd"), "momentum_factor": _scalar(sgd, "momentum_factor", "sgd"),
                    "weight_decay": _scalar(sgd, "weight_decay", "sgd")}  # fmt: skip
        for i, (layer, ref_w) in enumerate(zip(model.layers, _cells(dump["dzdw"]))):
            ref_w = [np.asarray(r) for r in _cells(ref_w)] if np.size(ref_w) else []
            if not ref_w or not any(r.size for r in ref_w):
                continue
            grads = layer_grads(layer)
            np_dtype = np.float64 if dtype == torch.float64 else np.float32
            weights = layer.matlab_arrays(layer.weight_params())
            for j, (g, r) in enumerate(zip(grads, ref_w)):
                checks.append(compare("dzdw", f"{layer.name}{{{j + 1}}}", lambda g=g: g, r, rtol))
            if sgd is None:
                continue
            after = [_layer_cells(sgd, k, i) for k in ("weights_after", "momentum_after")]
            for j, (w, g) in enumerate(zip(weights, grads)):
                new = deepibl_sgd_step(w, g, dtype=np_dtype, **step)
                for what, ours, refs, tol in zip(("weights_after", "momentum_after"), new, after,
                                                 (SGD_WEIGHTS_RTOL, SGD_MOMENTUM_RTOL)):  # fmt: skip
                    ref = refs[j] if j < len(refs) else None
                    checks.append(compare("sgd", f"{layer.name}{{{j + 1}}} {what}", lambda o=ours: o, ref, tol))
    if not any(not c.absent for c in checks):
        raise NetFormatError("the dump holds nothing checkable (every reference entry is absent or empty)")
    return checks


def normalize_hint(model, acts: list[torch.Tensor], ref_acts: list, forward: list[Check]) -> None:
    """If the first forward failure is an LRN (normalize) layer run ``exact`` that agrees with the dump
    in MatConvNet's CPU mode (fast_pow), say so in its check's note."""
    first = next((i for i, c in enumerate(forward) if not c.passed), None)
    if not first or model.normalize_mode != "exact" or not isinstance(model.layers[first - 1], Normalize):
        return
    layer = model.layers[first - 1]
    layer.mode = "matconvnet-cpu"
    try:
        with torch.no_grad():
            cpu = to_matlab(layer(acts[first - 1].detach()))
    finally:
        layer.mode = "exact"
    if rel_error(cpu, _squeeze4(ref_acts[first]).reshape(cpu.shape)) <= forward[first].tol:
        forward[first].note = ("rerun with --normalize matconvnet-cpu: this layer agrees with the dump that way "
                               "(made by MatConvNet's CPU fast_pow)")  # fmt: skip


def _layer_cells(sgd, key: str, i: int) -> list[np.ndarray]:
    """``sgd.<key>{i}``: layer i's arrays after the step (none where the dump holds fewer layers)."""
    cells = _cells(_field(sgd, key, "sgd"))
    return [np.asarray(r) for r in _cells(cells[i])] if i < len(cells) else []


def deepibl_sgd_step(
    weights: np.ndarray,
    grad_sum: np.ndarray,
    num_pairs: int,
    lr: float,
    momentum: np.ndarray | None = None,
    momentum_factor: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """deepIBL's SGD block for one tensor, in numpy (float32: MATLAB's single), as the reference the
    torch optimizer is checked against: m <- mu m - wd W - G / T; W <- W + lr m. Returns (W, m)
    ([docs/matlab.md#sgd-step](../docs/matlab.md#sgd-step))."""
    w = np.asarray(weights, dtype)
    g = np.asarray(grad_sum, dtype)
    m = np.zeros_like(w) if momentum is None else np.asarray(momentum, dtype)
    m = dtype(momentum_factor) * m - dtype(weight_decay) * w - g / dtype(num_pairs)
    return w + dtype(lr) * m, m


def layer_grads(layer) -> list[np.ndarray]:
    """dL/d(weights{j}) in MATLAB layout, float64."""
    return layer.matlab_arrays([p.grad if p.grad is not None else torch.zeros_like(p) for p in layer.weight_params()])


def format_report(checks: list[Check]) -> str:
    rows = [f"{'check':<10} {'name':<34} {'error':>10} {'tol':>8}  result"]
    for c in checks:
        if c.absent:
            rows.append(f"{c.group:<10} {c.name:<34} {'-':>10} {c.tol:>8.0e}  not in dump")
            continue
        rows.append(
            f"{c.group:<10} {c.name:<34} {c.error:>10.2e} {c.tol:>8.0e}  {'ok' if c.passed else 'FAIL'}"
            f"{'' if c.measure == 'rel' else ' (max abs)'}{f': {c.note}' if c.note else ''}"
        )
    failed = [c for c in checks if not c.passed]
    absent = sum(c.absent for c in checks)
    if absent:
        rows.append(f"{absent} not in the dump, skipped")
    rows.append(f"{len(checks) - len(failed) - absent} passed, {len(failed)} failed")
    if failed:
        first = failed[0]
        why = first.note if first.note.startswith("the shapes") else f"error {first.error:.2e} > {first.tol:.0e}"
        hint = f"; {first.note}" if first.note and first.note != why else ""
        rows.append(f"first failure: {first.group} at '{first.name}' ({why}){hint}")
    return "\n".join(rows)
