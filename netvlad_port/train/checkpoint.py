"""Resumable checkpoints without pickle: ``net/`` (a converted folder), ``state.safetensors``
(SGD momentum buffers, the train feature cache) and ``state.json`` (epoch, batch, lr, cache
interval, RNG state, negative cache, history, options). Written atomically: a run killed at any
point leaves the previous checkpoint intact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..converted import load_converted, save_converted
from ..errors import NetVladPortError
from ..io_utils import atomic_dir

STATE_JSON, STATE_TENSORS = "state.json", "state.safetensors"


def save_checkpoint(trainer, folder: Path) -> None:
    from safetensors.numpy import save_file

    tensors = {f"momentum.{i}": trainer.optimizer.state[p]["momentum_buffer"].detach().cpu().numpy()
               for i, p in enumerate(trainer.params) if "momentum_buffer" in trainer.optimizer.state.get(p, {})}
    if trainer.train_feats is not None:
        tensors["train_feats"] = np.ascontiguousarray(trainer.train_feats)
    state = {"epoch": trainer.epoch, "batch": trainer.batch, "lr": trainer.lr, "comp_freq": trainer.comp_freq,
             "rng": trainer.rng.bit_generator.state, "neg_cache": [c.tolist() for c in trainer.neg_cache],
             "history": trainer.history.to_json(), "options": trainer.opts.to_json(),
             "param_dtype": str(trainer.params[0].dtype) if trainer.params else "torch.float32"}
    with atomic_dir(folder, force=True) as tmp:
        save_converted(trainer.model.to_spec(), tmp / "net")
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(state))


def load_checkpoint(cls, folder: Path, db_train, db_val, progress: bool, log):
    from safetensors.numpy import load_file

    from .loop import History
    from .options import TrainOptions

    if not (folder / STATE_JSON).is_file():
        raise NetVladPortError(f"{folder}: no checkpoint to resume from")
    state = json.loads((folder / STATE_JSON).read_text())
    tensors = load_file(str(folder / STATE_TENSORS))
    trainer = cls(load_converted(folder / "net"), db_train, db_val, TrainOptions.from_json(state["options"]),
                  folder.parent, progress=progress, log=log)
    if state["param_dtype"] == "torch.float64":
        trainer.model.double()
    trainer.epoch, trainer.batch, trainer.lr, trainer.comp_freq = state["epoch"], state["batch"], state["lr"], \
        state["comp_freq"]
    for g in trainer.optimizer.param_groups:
        g["lr"] = trainer.lr
    trainer.rng.bit_generator.state = state["rng"]
    trainer.neg_cache = [np.asarray(c, np.int64) for c in state["neg_cache"]]
    trainer.history = History.from_json(state["history"])
    for i, p in enumerate(trainer.params):
        if f"momentum.{i}" in tensors:
            trainer.optimizer.state[p]["momentum_buffer"] = torch.from_numpy(tensors[f"momentum.{i}"]).to(p)
    trainer.train_feats = tensors.get("train_feats")
    return trainer
