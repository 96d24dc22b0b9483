"""Training: trainWeakly and deepIBL's train*.m, with MATLAB's names.

``options`` (defaults, plug-in options), ``recipes`` (named option sets), ``mining`` and ``samplers``
(tuples), ``terms`` (auxiliary losses), ``trunk`` (frozen layers computed once), ``update``
(backPropToLayer, the SGD step), ``step`` (one batch), ``validation`` (testNet, getBestEpoch), ``state``
(history, resume state), ``loop`` (the Trainer: schedule, refreshes, logging), ``checkpoint`` (file I/O)."""

from __future__ import annotations

import os
from pathlib import Path

from ..distributed import init_distributed  # noqa: F401  (re-exported: train.init_distributed)
from .loop import Trainer
from .options import TrainOptions
from .recipes import RECIPES, register_recipe
from .state import History
from .validation import pick_best_epoch

RUN_OUTPUTS = ("checkpoint_latest", "final", "log.jsonl", "summary.json", "recall_per_epoch.png", "tensorboard")


def training_data(dataset=None, train_spec=None, val_spec=None, root=None, spec_dir=None):
    """(train, val, the family's default recipe or None) of a family name (``pitts30k``) or of two
    dbStruct spec files."""
    from ..datasets import open_dataset, training_splits
    from ..errors import NetVladPortError

    if train_spec or val_spec:
        if not (train_spec and val_spec) or dataset:
            raise NetVladPortError("--train-spec and --val-spec go together, instead of --dataset")
        return open_dataset(str(train_spec), root), open_dataset(str(val_spec), root), None
    if not dataset:
        raise NetVladPortError("name the training data: --dataset NAME, or --train-spec A.mat --val-spec B.mat")
    db_train, db_val, family = training_splits(dataset, root, spec_dir)
    return db_train, db_val, family.recipe


def train(
    db_train=None,
    db_val=None,
    net=None,
    out_dir: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    train_spec=None,
    val_spec=None,
    root=None,
    spec_dir=None,
    recipe: str | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    log=print,
    **options,
) -> Path:
    """Train ``net`` (a NetSpec, .mat or converted folder, normally ``loadNet`` + ``addLayers``) and
    return the final model folder: the best epoch (``pickBestNet``) with ``addPCA`` applied.

    The data: ``db_train`` and ``db_val``, or ``dataset`` (a family name, ``root``, ``spec_dir``), or
    ``train_spec`` + ``val_spec``. The options: ``recipe`` (``recipes.RECIPES``; default the family's, else
    ``deepibl``) with ``options`` over it -- :class:`TrainOptions` fields and plug-ins' options. ``resume``
    continues the run in ``out_dir`` (options given must equal the run's, except ``RESUMABLE`` ones);
    otherwise an ``out_dir`` holding a run is refused unless ``force``, which removes it first. Under
    torchrun the process group is joined here. ``netvlad-port train`` is this function."""
    from ..distributed import rank_device
    from ..errors import NetVladPortError

    family_recipe = None
    if db_train is None:
        db_train, db_val, family_recipe = training_data(dataset, train_spec, val_spec, root, spec_dir)
    options["device"] = rank_device(options.get("device"))  # under torchrun: cuda:LOCAL_RANK
    init_distributed(options["device"])
    out_dir = Path(out_dir)
    if resume:
        trainer = Trainer.resume(out_dir, db_train, db_val, progress=progress, log=log, **options)
        check_final_pca(trainer.model.to_spec(), trainer.opts, db_train)
    else:
        if net is None:
            raise NetVladPortError("--model is required (the start network, e.g. from `netvlad-port cluster`)")
        opts = TrainOptions.from_recipe(recipe or family_recipe, **options)
        trainer = _new_run(net, db_train, db_val, opts, out_dir, force, progress, log)
    trainer.run()
    return _finish(trainer, db_train, out_dir, progress, log)


def check_final_pca(spec, opts: TrainOptions, db_train) -> None:
    """addPCA runs after the last epoch: refuse a pcaDim the network or the images cannot give, now."""
    from ..matconvnet.spec import output_dim
    from ..pca import N_TRAIN_CAP, check_pca_dim, check_unwhitened

    if opts.pca_dim and output_dim(spec):
        check_pca_dim(opts.pca_dim, output_dim(spec), min(db_train.num_images, N_TRAIN_CAP))
        check_unwhitened(spec)


def _new_run(net, db_train, db_val, opts: TrainOptions, out_dir: Path, force: bool, progress: bool, log) -> Trainer:
    import shutil

    from ..errors import NetVladPortError
    from ..loading import load_spec

    existing = [p for p in out_dir.glob("*") if p.name in RUN_OUTPUTS or p.name.startswith("epoch_")]
    resumable = (out_dir / "checkpoint_latest").is_dir()  # a run stopped before its first checkpoint starts again
    if existing and resumable and not force:
        raise NetVladPortError(f"{out_dir}: holds a training run ({existing[0].name}, ...); use --resume to "
                               f"continue it or --force to start again")  # fmt: skip
    opts.objective()  # options without meaning are refused first
    spec = net if hasattr(net, "layers") else load_spec(net)
    if opts.attention:
        from ..networks import insert_attention

        spec = insert_attention(spec, opts.attention)
    check_final_pca(spec, opts, db_train)  # before anything of an earlier run is removed
    for p in existing:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return Trainer(spec, db_train, db_val, opts, out_dir, progress, log)


def _finish(trainer: Trainer, db_train, out_dir: Path, progress: bool, log) -> Path:
    """``pickBestNet``, ``addPCA``, the run's plot and summary; returns the final model folder."""
    from ..converted import load_converted, save_converted
    from ..pca import add_pca
    from ..plots import plot_epochs

    if trainer.rank != 0:
        return out_dir / "final"
    o = trainer.opts
    best = (
        pick_best_epoch(trainer.history, o.recall_ns, o.select_by) if trainer.history.val_recall else trainer.epoch - 1
    )
    title = f"{out_dir.resolve().name}: {o.loss} loss"
    plot_epochs(trainer.history, o.recall_ns, out_dir / "recall_per_epoch.png", best, epoch_losses(out_dir), title)
    spec = load_converted(out_dir / f"epoch_{best:06d}")
    if o.pca_dim:
        spec = add_pca(spec, db_train, pca_dim=o.pca_dim, device=o.device, progress=progress, rng=o.rng)
    save_converted(spec, out_dir / "final", force=True)
    write_summary(trainer, best, out_dir / "summary.json")
    outputs = [out_dir / "log.jsonl", out_dir / "summary.json", out_dir / "recall_per_epoch.png"]
    if (out_dir / "tensorboard").is_dir():
        outputs.append(out_dir / "tensorboard")
    log(f"best epoch {best}; final model: {out_dir / 'final'}")
    log("run outputs: " + ", ".join(str(p) for p in outputs if p.exists()))
    return out_dir / "final"


def epoch_losses(out_dir: Path) -> dict[int, float]:
    """Mean training loss of each epoch, from the batch records of the run's ``log.jsonl``."""
    import json

    log_path = out_dir / "log.jsonl"
    losses: dict[int, list[float]] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if "batch" in record and "loss" in record:
                losses.setdefault(int(record["epoch"]), []).append(float(record["loss"]))
    return {e: sum(v) / len(v) for e, v in sorted(losses.items())}


def write_summary(trainer: Trainer, best: int, path: Path) -> None:
    """``summary.json``: the best epoch (``getBestEpoch``, by val recall@``select_by``) and the validation
    recalls per epoch (per GCL step with ``step_queries``)."""
    import json

    from ..io_utils import atomic_file

    h = trainer.history
    summary = {
        "best_epoch": best,
        "select_by": trainer.opts.select_by,
        "step_queries": trainer.opts.step_queries,
        "val_protocol": trainer.opts.val_protocol,
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
    "RECIPES",
    "Trainer",
    "TrainOptions",
    "History",
    "pick_best_epoch",
    "register_recipe",
    "train",
    "training_data",
    "train_gauss_kernal_ind",
    "train_gauss_kernal_joint",
    "train_cauchy_kernel_ind",
    "train_cauchy_kernel_joint",
    "train_exp_kernal_ind",
    "train_exp_kernal_joint",
    "train_weakly",
]
