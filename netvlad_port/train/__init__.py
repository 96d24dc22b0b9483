"""Training: trainWeakly and deepIBL's train*.m, with MATLAB's names.

``options`` (defaults), ``mining`` (tuples), ``trunk`` (frozen layers computed once), ``update``
(backPropToLayer, the SGD step), ``loop`` (the Trainer), ``checkpoint`` (file I/O)."""

from __future__ import annotations

import os
from pathlib import Path

from .loop import History, Trainer, pick_best_epoch
from .options import TrainOptions

RUN_OUTPUTS = ("checkpoint_latest", "final", "log.jsonl", "summary.json", "recall_per_epoch.png", "tensorboard")


def train(
    db_train,
    db_val,
    net,
    out_dir: str | os.PathLike,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    log=print,
    **options,
) -> Path:
    """Train ``net`` (a NetSpec, .mat or converted folder, normally ``loadNet`` + ``addLayers``) and
    return the final model folder: the best epoch (``pickBestNet``) with ``addPCA`` applied.
    ``options``: :class:`TrainOptions` fields (``loss="sare-ind"``, ...). ``resume`` continues the
    run in ``out_dir`` (options given must equal the run's, except ``RESUMABLE`` ones); otherwise an
    ``out_dir`` holding a run is refused unless ``force``, which removes it first."""
    import shutil

    from .. import load_spec
    from ..converted import load_converted, save_converted
    from ..errors import NetVladPortError
    from ..pca import add_pca
    from ..plots import plot_epochs

    out_dir = Path(out_dir)
    if resume:
        trainer = Trainer.resume(out_dir, db_train, db_val, progress=progress, log=log, **options)
    else:
        existing = [p for p in out_dir.glob("*") if p.name in RUN_OUTPUTS or p.name.startswith("epoch_")]
        if existing and not force:
            raise NetVladPortError(f"{out_dir}: holds a training run ({existing[0].name}, ...); use --resume to "
                                   f"continue it or --force to start again")  # fmt: skip
        for p in existing:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        spec = net if hasattr(net, "layers") else load_spec(net)
        opts = TrainOptions(**options)
        if opts.attention:
            from ..networks import insert_attention

            spec = insert_attention(spec, opts.attention)
        trainer = Trainer(spec, db_train, db_val, opts, out_dir, progress, log)
    trainer.run()
    if trainer.rank != 0:
        return out_dir / "final"
    plot_epochs(trainer.history, trainer.opts.recall_ns, out_dir / "recall_per_epoch.png")
    best = pick_best_epoch(trainer.history, trainer.opts.recall_ns) if trainer.history.val_recall else trainer.epoch - 1
    spec = load_converted(out_dir / f"epoch_{best:06d}")
    if trainer.opts.pca_dim:
        spec = add_pca(
            spec,
            db_train,
            pca_dim=trainer.opts.pca_dim,
            device=trainer.opts.device,
            progress=progress,
            rng=trainer.opts.rng,
        )
    save_converted(spec, out_dir / "final", force=True)
    write_summary(trainer, best, out_dir / "summary.json")
    outputs = [out_dir / "log.jsonl", out_dir / "summary.json", out_dir / "recall_per_epoch.png"]
    if (out_dir / "tensorboard").is_dir():
        outputs.append(out_dir / "tensorboard")
    log(f"best epoch {best}; final model: {out_dir / 'final'}")
    log("run outputs: " + ", ".join(str(p) for p in outputs if p.exists()))
    return out_dir / "final"


def write_summary(trainer: Trainer, best: int, path: Path) -> None:
    """``summary.json``: the best epoch (``getBestEpoch``) and the validation recalls per epoch."""
    import json

    from ..io_utils import atomic_file

    h = trainer.history
    summary = {
        "best_epoch": best,
        "recall_ns": list(trainer.opts.recall_ns),
        "pretrain_val_recall": h.pretrain_val_recall,
        "val_recall": {str(e): r for e, r in sorted(h.val_recall.items())},
        "val_rankloss": {str(e): r for e, r in sorted(h.val_rankloss.items())},
        "best_val_recall": h.val_recall.get(best),
        "final": "final",
    }
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")


def _named(loss: str):
    def fn(db_train, db_val, net, out_dir, **kw):
        return train(db_train, db_val, net, out_dir, loss=loss, **kw)

    return fn


# MATLAB's training functions (deepIBL's file names kept, typos included)
train_gauss_kernal_ind = _named("sare-ind")
train_gauss_kernal_joint = _named("sare-joint")
train_cauchy_kernel_ind = _named("cauchy-ind")
train_cauchy_kernel_joint = _named("cauchy-joint")
train_exp_kernal_ind = _named("exp-ind")
train_exp_kernal_joint = _named("exp-joint")
train_weakly = _named("triplet")

__all__ = [
    "Trainer",
    "TrainOptions",
    "History",
    "pick_best_epoch",
    "train",
    "train_gauss_kernal_ind",
    "train_gauss_kernal_joint",
    "train_cauchy_kernel_ind",
    "train_cauchy_kernel_joint",
    "train_exp_kernal_ind",
    "train_exp_kernal_joint",
    "train_weakly",
]
