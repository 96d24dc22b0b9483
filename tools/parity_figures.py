#!/usr/bin/env python
"""The figures the MATLAB parity tests assert on, as JSON, to see how far a torch upgrade moves them.

Mirrors:
  * tests/test_parity.py and tests/test_parity_cli.py::test_gradients_and_sgd_step_match: every suite in
    tests/data/parity (helpers.SUITES, plus helpers.FASTPOW_SUITE in ``matconvnet-cpu`` mode), float32 and
    float64, through netvlad_port.parity.run_parity (forward per layer, descriptor, SARE losses, dzdy, dzdx,
    dzdw, SGD step), plus test_parity's L2 of the descriptor difference. Forward layers carry test_parity's
    tolerance (1e-5, 1e-4 for the VLAD layers), the other checks run_parity's.
  * tests/test_trajectory.py: its ``run`` fixture (the whole gauss_ind_tiny training run, float32), then the
    figures its tests take the max of: loss per epoch, W - W0 and momentum per mid-epoch checkpoint, W - W0
    per epoch checkpoint, rank loss per epoch, and the mismatch counts of the checks that must be exact.

Keys are ``suite/check/dtype``; errors are max |ours - ref| / max |ref| unless the check says otherwise.

  python tools/parity_figures.py [--out F.json] [--no-trajectory]
  python tools/parity_figures.py --compare A.json B.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import netvlad_port  # noqa: E402
from netvlad_port.parity import load_dump, run_parity  # noqa: E402

from helpers import FASTPOW_SUITE, SUITES, suite  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parity_figures(figures: dict, tols: dict) -> None:
    from test_parity import layer_tolerance

    for name in [*SUITES, FASTPOW_SUITE]:
        s = suite(name)
        dump = load_dump(s.dir / "ref.mat")
        normalize = "matconvnet-cpu" if name == FASTPOW_SUITE else "exact"
        for dtype_name, dtype in DTYPES.items():
            model = netvlad_port.load(s.net_path, normalize=normalize).to(dtype)
            for c in run_parity(model, dump):
                if not c.absent:
                    key = f"{name}/{c.group}:{c.name}/{dtype_name}"
                    figures[key] = c.error
                    tols[key] = layer_tolerance(c.name) if c.group == "forward" else c.tol
            with torch.no_grad():
                diff = model(s.images).double() - torch.from_numpy(s.ref["desc_test"]).T.double()
            key = f"{name}/descriptor:desc_test L2/{dtype_name}"
            figures[key], tols[key] = diff.norm(dim=1).max().item(), 2e-5


class _TmpFactory:
    def __init__(self, root: str):
        self.root = Path(root)

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path


def trajectory_run(tmp: str):
    """test_trajectory's ``run`` fixture itself, with a temporary folder and a monkeypatch."""
    import pytest
    import test_trajectory as tt

    with pytest.MonkeyPatch.context() as mp:
        return tt.run.__wrapped__(_TmpFactory(tmp), mp)


def trajectory_figures(figures: dict, tols: dict) -> None:
    import test_trajectory as tt

    with tempfile.TemporaryDirectory() as tmp:
        run = trajectory_run(tmp)
        fig: dict[str, float] = {}
        tol: dict[str, float] = {}
        ref_tuples = [(t["qID"], t["posID"], t["negIDs"]) for b in tt.REF["batches"] for t in b["tuples"]]
        fig["exact:tuples mismatched"] = sum(a != b for a, b in zip(run.tuples, ref_tuples)) + abs(
            len(run.tuples) - len(ref_tuples)
        )
        ours = [(r["epoch"], r["loss"]) for r in run.log if "loss" in r]
        for (epoch, loss), b in zip(ours, tt.REF["batches"]):
            key = f"loss:epoch{epoch}"
            fig[key] = max(fig.get(key, 0.0), abs(loss - b["loss"]) / abs(b["loss"]))
            tol[key] = 1e-4
        _mid_epoch(tt, run, fig, tol)
        for epoch in (1, 2, 3):
            _epoch_end(tt, run, epoch, fig, tol)
        s = run.summary
        fig["exact:best epoch, recalls mismatched"] = (
            (s["best_epoch"] != tt.REF["best_epoch"])
            + (s["pretrain_val_recall"] != tt.REF["pretrain"]["val_recall"])
            + sum(s["val_recall"][str(e)] != r for e, r in zip((1, 2, 3), tt.REF["val_recall_per_epoch"]))
        )
        for e in (1, 2, 3):
            fig[f"val_rankloss:epoch{e}"] = abs(s["val_rankloss"][str(e)] / tt.REF["val_rankloss"][e - 1] - 1)
            tol[f"val_rankloss:epoch{e}"] = 1e-4
    for k, v in fig.items():
        key = f"{tt.RUN.name}/{k}/float32"
        figures[key], tols[key] = float(v), tol.get(k, 0.0)


def _mid_epoch(tt, run, fig: dict, tol: dict) -> None:
    w0 = {l.name: l.weights for l in run.spec.layers}
    fig["exact:neg cache, rng mismatched"] = 0
    for epoch, batch, weights, momentum, neg_cache, rng in run.saves:
        if batch == 1:
            continue  # the end-of-epoch save
        ref_w, ref_m, ref_cache, ref_rng = tt._ref_mid_epoch(epoch, batch)
        wkey, mkey = f"W-W0:ep{epoch}_batch{batch:02d}", f"momentum:ep{epoch}_batch{batch:02d}"
        fig[wkey] = fig[mkey] = 0.0
        tol[wkey] = tol[mkey] = 1e-3
        for name, ws in ref_w.items():
            for j, r in enumerate(ws):
                ours, r = weights[name][j], r.reshape(weights[name][j].shape)
                base = np.asarray(w0[name][j], np.float64).reshape(r.shape)
                fig[wkey] = max(fig[wkey], tt.rel(ours - base, r - base))
                m = momentum[name][j]
                fig[mkey] = max(fig[mkey], tt.rel(m, ref_m[name][j].reshape(m.shape)))
        fig["exact:neg cache, rng mismatched"] += ([[i + 1 for i in c] for c in neg_cache] != ref_cache) + (
            rng["key"] != ref_rng[:624].tolist() or rng["pos"] != ref_rng[624]
        )


def _epoch_end(tt, run, epoch: int, fig: dict, tol: dict) -> None:
    ours = netvlad_port.load_spec(run.out / f"epoch_{epoch:06d}")
    ref = tt.read_net(tt.RUN / "checkpoints" / f"tiny_ep{epoch:06d}_latest.mat")
    key, frozen = f"W-W0:epoch{epoch}", "exact:frozen tensors changed"
    fig[key], tol[key] = 0.0, 1e-3
    fig.setdefault(frozen, 0)
    for start, o, r in zip(run.spec.layers, ours.layers, ref.layers):
        for w0, a, b in zip(start.weights, o.weights, r.weights):
            w0 = np.asarray(w0, np.float64)
            if np.array_equal(b, w0):
                fig[frozen] += not np.array_equal(a, w0)
            else:
                fig[key] = max(fig[key], tt.rel(a - w0, b - w0))


def compare(a_path: str, b_path: str, top: int = 10) -> None:
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    fa, fb = a["figures"], b["figures"]
    common = sorted(set(fa) & set(fb))
    for path, f, g in ((a_path, fa, fb), (b_path, fb, fa)):
        missing = sorted(set(f) - set(g))
        if missing:
            print(
                f"{len(missing)} figures only in {path}: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "")
            )
    changes = sorted(((abs(fb[k] - fa[k]), k) for k in common), reverse=True)
    print(f"{len(common)} figures; torch {a['torch']} ({a_path}) -> {b['torch']} ({b_path})")
    changed = [(c, k) for c, k in changes if c > 0]
    if not changed:
        print("no figure changed: every one is bit-identical")
    else:
        k = changed[0][1]
        print(f"largest absolute change: {k}: {fa[k]:.3e} -> {fb[k]:.3e}")
        print(f"{len(changed)} figures changed. Top {top}:")
    for change, k in changed[:top]:
        print(f"  {change:.3e}  {fa[k]:.3e} -> {fb[k]:.3e}  {k}")
    for path, d in ((a_path, a), (b_path, b)):
        print(f"largest figure per suite vs its tolerance, {path} (torch {d['torch']}):")
        by_suite: dict[str, tuple[float, str]] = {}
        for k, v in d["figures"].items():
            t = d["tolerances"][k]
            ratio = v / t if t > 0 else (float("inf") if v > 0 else 0.0)
            name = k.split("/")[0]
            by_suite[name] = max(by_suite.get(name, (-1.0, "")), (ratio, k))
        for name, (ratio, k) in sorted(by_suite.items()):
            print(f"  {name:<22} {d['figures'][k]:.3e} / tol {d['tolerances'][k]:.0e} = {ratio:.3f}  {k}")


@click.command()
@click.option("--out", type=click.Path(dir_okay=False), help="Write the JSON here instead of stdout.")
@click.option("--no-trajectory", is_flag=True, help="Parity suites only (skip the training run).")
@click.option("--compare", "compare_files", nargs=2, type=click.Path(exists=True, dir_okay=False))
def main(out, no_trajectory, compare_files):
    if compare_files:
        compare(*compare_files)
        return
    start, figures, tols = time.perf_counter(), {}, {}
    parity_figures(figures, tols)
    parity_s = time.perf_counter() - start
    if not no_trajectory:
        trajectory_figures(figures, tols)
    result = {
        "torch": torch.__version__,
        "figures": figures,
        "tolerances": tols,
        "seconds": {"parity": round(parity_s, 1), "total": round(time.perf_counter() - start, 1)},
    }
    text = json.dumps(result, sort_keys=True, indent=1)
    if out:
        Path(out).write_text(text + "\n")
    else:
        click.echo(text)


if __name__ == "__main__":
    main()
