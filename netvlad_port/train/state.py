"""A run's state besides the weights: the history (``obj`` of the MATLAB trainers) and what a resume
needs -- epoch, batch, lr, refresh interval, the generator, the negative caches, momentum, the train
feature cache ([docs/formats.md#checkpoint](../../docs/formats.md#checkpoint))."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class History:
    batch_loss: list[float] = field(default_factory=list)  # obj.train.loss: mean tuple loss per batch
    val_recall: dict[int, list[float]] = field(default_factory=dict)  # epoch -> recall@recall_ns
    val_rankloss: dict[int, float] = field(default_factory=dict)
    train_recall: dict[int, list[float]] = field(default_factory=dict)
    pretrain_val_recall: list[float] | None = None

    def to_json(self):
        return {
            "batch_loss": self.batch_loss,
            "val_recall": {str(k): v for k, v in self.val_recall.items()},
            "val_rankloss": {str(k): v for k, v in self.val_rankloss.items()},
            "train_recall": {str(k): v for k, v in self.train_recall.items()},
            "pretrain_val_recall": self.pretrain_val_recall,
        }

    @classmethod
    def from_json(cls, d):
        return cls(
            d["batch_loss"],
            {int(k): v for k, v in d["val_recall"].items()},
            {int(k): v for k, v in d["val_rankloss"].items()},
            {int(k): v for k, v in d["train_recall"].items()},
            d.get("pretrain_val_recall"),
        )


def run_state(t) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON-able state, tensors) of trainer ``t``."""
    tensors = {
        f"momentum.{i}": t.optimizer.state[p]["momentum_buffer"].detach().cpu().numpy()
        for i, p in enumerate(t.params)
        if "momentum_buffer" in t.optimizer.state.get(p, {})
    }
    if t.train_feats is not None:
        tensors["train_feats"] = t.train_feats
    state = {
        "epoch": t.epoch,
        "batch": t.batch,
        "lr": t.lr,
        "comp_freq": t.comp_freq,
        "rng": t.rng.get_state(),
        "neg_cache": [c.tolist() for c in t.neg_cache],
        "history": t.history.to_json(),
        "options": t.opts.to_json(),
        "param_dtype": str(t.params[0].dtype) if t.params else "torch.float32",
    }
    return state, tensors


def restore_state(t, state: dict, tensors: dict[str, np.ndarray]) -> None:
    """Put :func:`run_state`'s output back into trainer ``t``."""
    if state["param_dtype"] == "torch.float64":
        t.model.double()
    t.epoch, t.batch, t.lr, t.comp_freq = state["epoch"], state["batch"], state["lr"], state["comp_freq"]
    t.set_lr()
    t.rng.set_state(state["rng"])
    t.neg_cache = [np.asarray(c, np.int64) for c in state["neg_cache"]]
    t.history = History.from_json(state["history"])
    for i, p in enumerate(t.params):
        if f"momentum.{i}" in tensors:
            t.optimizer.state[p]["momentum_buffer"] = torch.from_numpy(tensors[f"momentum.{i}"]).to(p)
    t.train_feats = tensors.get("train_feats")


class EventLog:
    """A run's ``log.jsonl`` lines, and TensorBoard scalars when tensorboard is installed; written by rank 0
    only (``active``)."""

    def __init__(self, out_dir: Path, active: bool):
        self.out_dir, self.active, self.tb = Path(out_dir), active, None

    def __call__(self, record: dict, step: int) -> None:
        if not self.active:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tb = False
        if self.tb:
            for k, v in record.items():
                if k not in ("epoch", "batch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)


def truncate_log(path: Path, epoch: int, batch: int) -> None:
    """Drop the records of ``log.jsonl`` written after the checkpoint a run resumes from (batch records from
    (epoch, batch) on, epoch records from ``epoch`` on), so the resumed run does not log them twice."""
    if not path.is_file():
        return
    from ..io_utils import atomic_file

    kept = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if ("batch" in r and (r["epoch"], r["batch"]) < (epoch, batch)) or ("batch" not in r and r["epoch"] < epoch):
            kept.append(line + "\n")
    with atomic_file(path) as tmp:
        tmp.write_text("".join(kept))
