"""``trainWeakly`` / deepIBL ``train*.m`` options with their MATLAB defaults
([docs/matlab.md#training-options](../../docs/matlab.md#training-options)), and the options plug-ins add.

The dataclass defaults are the MATLAB functions' own; the scripts that trained the published models
chose other values, kept as named recipes (``recipes.py``). The network options of the MATLAB trainers
(netID, layerName, method) describe the network they build; here the network comes built
(``netvlad-port cluster``), so they are not options. A plug-in's options (:func:`register_option`) live
in ``extras`` and are given like any other: ``train(..., guidance="ids:DIR")``, ``--guidance ids:DIR``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import NetVladPortError
from ..registry import Registry
from ..retrieval import RECALL_NS
from .schedule import LR_SCHEDULES

MOMENTUM, WEIGHT_DECAY = 0.9, 1e-3  # deepIBL's SGD block
# options that may change on --resume (they do not change the numbers of the epochs already run)
RESUMABLE = ("n_epoch", "device", "trunk_cache", "trunk_dir", "pca_dim", "select_by", "patience")
FORWARDS = ("tuple", "batch", "siamese")  # how Step runs a batch's images (step.py)
TUPLES = ("recall_ns", "fix_layers", "jitter_scale", "attention")  # lists in JSON


@dataclass(frozen=True)
class PluginOption:
    """A training option a plug-in adds: its keyword, default, help and value kind (``"str"``,
    ``"float"``, ``"int"``, ``"flag"``, ``"names"`` (comma-separated), or a tuple of choices);
    ``check(opts, loss)`` refuses it, when given, for a run it means nothing to."""

    name: str
    default: Any
    help: str
    kind: Any = "str"
    check: Callable[[Any, Any], None] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: Registry[PluginOption] = Registry("training option", builtins="netvlad_port.train.options")


def register_option(option: PluginOption, replace: bool = False) -> PluginOption:
    return OPTIONS.register(option.name, option, replace=replace)


@dataclass
class TrainOptions:
    batch_size: int = 4  # tuples per SGD step
    learning_rate: float = 1e-4  # recipes: Pitts30k 0.001 (recipes.py)
    lr_down_freq: int = 5  # epochs
    lr_down_factor: float = 2
    weight_decay: float = WEIGHT_DECAY
    momentum: float = MOMENTUM
    back_prop_to_layer: str | int = 1  # the README scripts (and every recipe) use 'conv5_1'
    fix_layers: tuple[str, ...] = ()
    n_neg_choice: int = 1000
    n_neg_cap: int = 10
    n_neg_cache: int = 10
    n_epoch: int = 30
    margin: float = 0.1  # triplet margin on squared distances (and the rank loss)
    exclude_very_hard: bool = False  # trainWeakly only
    jitter_flip: bool = False
    jitter_scale: tuple[float, ...] = ()
    test0: bool = True
    save_frequency: int = 2000  # queries
    comp_feats_frequency: int = 1000  # queries
    compute_batch_size: int = 10
    epoch_test_frequency: int = 1
    n_test_sample: int = 1000
    n_test_rank_sample: int = 5000
    recall_ns: tuple[int, ...] = RECALL_NS
    start_epoch: int = 1
    # not in MATLAB
    loss: str = "sare-ind"
    attention: tuple[str, ...] = ()  # modules inserted before the aggregation (networks.ATTENTION)
    rng: str = "matlab"  # MATLAB's generator and calls (docs/matlab.md#random-numbers), or "numpy"
    trunk_cache: str = "auto"  # memory | disk | none (recompute the frozen layers, as other ports do)
    trunk_fp16: bool = False
    trunk_dir: str = ""  # where a disk trunk cache goes (default OUT/trunk_cache)
    precision: str = "fp32"  # bf16 | fp16: autocast for the trainable layers (opt-in)
    device: str = "auto"  # a GPU when there is one; train() records the device it resolved
    pca_dim: int = 4096  # addPCA on the best epoch; 0: skip
    # the originals' schedules and batches (docs/gcl.md#training, docs/stml.md#batches-and-the-best-epoch)
    step_queries: int = 0  # >0: an epoch is one GCL step of this many queries (src/datasets.py:327-409)
    forward: str = "tuple"  # tuple (MATLAB) | batch (STML, tasks/train.py:44-54) | siamese (GCL, train.py:142-167)
    lr_schedule: str = "matlab"  # matlab | steplr (Nanne's StepLR stepped with the epoch; schedule.py)
    patience: int = 0  # >0: stop after more than patience / epoch_test_frequency tests without a new best
    select_by: int = 5  # the best epoch: max val recall@select_by (getBestEpoch 5; STML 1, tasks/train.py:199)
    val_protocol: str = "matlab"  # the protocol of the validation recalls (retrieval.PROTOCOLS; GCL's: gcl)
    # the start network's features (MATLAB's dbCheckpoint0 ...: float32 .bin); computed and written when absent
    db_checkpoint0: str = ""
    q_checkpoint0: str = ""
    db_checkpoint0_val: str = ""
    q_checkpoint0_val: str = ""
    loss_params: dict = field(default_factory=dict)  # keyword hyperparameters of the loss function
    extras: dict = field(default_factory=dict)  # plug-ins' options (register_option), by name

    @property
    def save_batch_frequency(self) -> int:
        return math.ceil(self.save_frequency / self.batch_size)

    @property
    def comp_feats_batch_frequency(self) -> int:
        return math.ceil(self.comp_feats_frequency / self.batch_size)

    def objective(self):
        """(loss, sampler) of the run, every option that has no meaning for them refused in one line."""
        from ..losses import LOSSES
        from .samplers import SAMPLERS

        loss = LOSSES[self.loss]
        sampler = SAMPLERS[loss.mining]
        if self.exclude_very_hard and loss.mining != "violators":
            raise NetVladPortError(
                f"excludeVeryHard is trainWeakly's (--loss triplet); deepIBL's train*.m accept it and ignore it, "
                f"so it has no meaning for --loss {self.loss}"
            )
        loss.check_params(self.loss_params)
        self.check_schedule(loss)
        if sampler.check is not None:
            sampler.check(self, loss)
        for name in self.extras:  # a plug-in's option that means nothing for this run
            if (option := OPTIONS[name]).check is not None:
                option.check(self, loss)
        return loss, sampler

    def check_schedule(self, loss) -> None:
        """step_queries, forward, select_by and val_protocol: each bad value refused in one line."""
        from ..retrieval import PROTOCOLS

        if not isinstance(self.step_queries, int) or self.step_queries < 0:
            raise NetVladPortError(f"--step-queries must be a whole number >= 0 (0: epochs), got {self.step_queries!r}")
        if self.step_queries and loss.mining != "pairs":
            raise NetVladPortError(f"--step-queries draws GCL's pairs; --loss {self.loss} mines tuples on the feature "
                                   f"cache (use --step-queries 0)")  # fmt: skip
        if self.forward not in FORWARDS:
            raise NetVladPortError(f"--forward must be one of {', '.join(FORWARDS)}, got {self.forward!r}")
        if self.forward == "siamese" and loss.mining != "pairs":
            raise NetVladPortError(f"--forward siamese runs GCL's pairs; --loss {self.loss} trains on tuples")
        if self.forward != "tuple" and (self.jitter_scale or self.jitter_flip):
            raise NetVladPortError(
                f"--forward {self.forward} stacks the batch's images: no --jitter-scale/--jitter-flip"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise NetVladPortError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise NetVladPortError(f"--patience must be a whole number of epochs >= 0 (0: off), got {self.patience!r}")
        if self.select_by not in self.recall_ns:
            raise NetVladPortError(f"--select-by {self.select_by!r}: not one of recallNs "
                                   f"({','.join(map(str, self.recall_ns))})")  # fmt: skip
        if PROTOCOLS.get(self.val_protocol) is None:
            raise NetVladPortError(f"--val-protocol {self.val_protocol!r}: expected one of "
                                   f"{', '.join(PROTOCOLS)}")  # fmt: skip

    def extra(self, name: str) -> Any:
        """A plug-in option's value (its default when not given)."""
        return self.extras[name] if name in self.extras else OPTIONS[name].default

    @classmethod
    def create(cls, **options) -> TrainOptions:
        """Options from keywords: the dataclass fields, and plug-ins' options into ``extras``. An unknown
        name is one line listing what would have been accepted."""
        known = {f.name for f in fields(cls)}
        core = {k: v for k, v in options.items() if k in known}
        extras = dict(core.pop("extras", {}))
        for k, v in options.items():
            if k in known:
                continue
            if OPTIONS.get(k) is None:
                raise NetVladPortError(f"unknown training option {k!r}: expected one of "
                                       f"{', '.join(sorted(known | set(OPTIONS)))}")  # fmt: skip
            extras[k] = list(v) if isinstance(v, tuple) else v
        for k in TUPLES:
            if k in core:
                core[k] = tuple(core[k])
        return cls(**core, extras=extras)

    @classmethod
    def from_recipe(cls, recipe: str | None = None, **options) -> TrainOptions:
        """A recipe's options (``recipes.RECIPES``) with ``options`` over them."""
        from .recipes import recipe_options

        return cls.create(**{**recipe_options(recipe), **options})

    def to_json(self) -> dict:
        d = asdict(self)
        for k in TUPLES:
            d[k] = list(d[k])
        return d

    def with_changes(self, changes: dict, where: str) -> TrainOptions:
        """These options with ``changes`` for a resume: RESUMABLE ones are applied, any other that
        differs is refused with the list of differences."""
        current, diffs = self.to_json(), []
        flat = {**current, **current["extras"]}
        for k, v in changes.items():
            if k not in flat and OPTIONS.get(k) is None:
                raise NetVladPortError(f"unknown training option {k!r}")
            new = list(v) if isinstance(v, (tuple, list)) else v
            old = flat[k] if k in flat else OPTIONS[k].default
            if new != (list(old) if isinstance(old, tuple) else old):
                if k in RESUMABLE:
                    current[k] = new
                else:
                    diffs.append(f"{k} {old!r} -> {new!r}")
        if diffs:
            raise NetVladPortError(
                f"{where}: --resume with options that differ from the run's: {'; '.join(diffs)} (only "
                f"{', '.join(RESUMABLE)} may change; start a new run with --force to change the others)"
            )
        return TrainOptions.from_json(current)

    @classmethod
    def from_json(cls, d: dict) -> TrainOptions:
        d = {k: v for k, v in d.items() if k not in ("net_id", "layer_name", "method", "extra")}  # older runs
        known = {f.name for f in fields(cls)}
        extras = dict(d.pop("extras", {}))
        extras.update({k: d.pop(k) for k in list(d) if k not in known})  # runs written before plug-in options
        return cls.create(**d, extras={k: v for k, v in extras.items() if v is not None})
