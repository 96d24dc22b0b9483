"""``trainWeakly`` / deepIBL ``train*.m`` options with their MATLAB defaults
([docs/matlab.md#training-options](../../docs/matlab.md#training-options)).

The network options of the MATLAB trainers (netID, layerName, method) describe the network they
build; here the network comes built (``netvlad-port cluster``), so they are not options."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..errors import NetVladPortError
from ..retrieval import RECALL_NS

MOMENTUM, WEIGHT_DECAY = 0.9, 1e-3  # deepIBL's SGD block
# options that may change on --resume (they do not change the numbers of the epochs already run)
RESUMABLE = ("n_epoch", "device", "trunk_cache", "trunk_dir", "pca_dim")
TUPLES = ("recall_ns", "fix_layers", "jitter_scale", "attention", "guidance_reject")  # lists in JSON


@dataclass
class TrainOptions:
    batch_size: int = 4  # tuples per SGD step
    learning_rate: float = 1e-4  # the recipes use 0.001 for Pitts30k (datasets.DATASETS recipe_lr)
    lr_down_freq: int = 5  # epochs
    lr_down_factor: float = 2
    weight_decay: float = WEIGHT_DECAY
    momentum: float = MOMENTUM
    back_prop_to_layer: str | int = 1  # the README scripts use 'conv5_1'
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
    mining_margin: float | None = None  # NAN/STML mining: d(q,n) < d(q,p) + this (default: the loss's)
    attention: tuple[str, ...] = ()  # modules inserted before the aggregation (layers/attention.py)
    guidance: str = ""  # the de-attention mask's supervision: masks:DIR, ids:DIR or h5:FILE (guidance.py)
    guidance_reject: tuple[str, ...] = ("human", "vehicle", "sky")  # Cityscapes categories of ids:DIR
    guidance_weight: float = 0.1  # STML's --w_deatt_loss in the published script
    guidance_loss: str = "mse"  # or bce
    rng: str = "matlab"  # MATLAB's generator and calls (docs/matlab.md#random-numbers), or "numpy"
    trunk_cache: str = "auto"  # memory | disk | none (recompute the frozen layers, as other ports do)
    trunk_fp16: bool = False
    trunk_dir: str = ""  # where a disk trunk cache goes (default OUT/trunk_cache)
    precision: str = "fp32"  # bf16 | fp16: autocast for the trainable layers (opt-in)
    device: str = "cpu"
    pca_dim: int = 4096  # addPCA on the best epoch; 0: skip
    # the start network's features (MATLAB's dbCheckpoint0 ...: float32 .bin); computed and written when absent
    db_checkpoint0: str = ""
    q_checkpoint0: str = ""
    db_checkpoint0_val: str = ""
    q_checkpoint0_val: str = ""
    loss_params: dict = field(default_factory=dict)  # keyword hyperparameters of the loss function

    @property
    def save_batch_frequency(self) -> int:
        return math.ceil(self.save_frequency / self.batch_size)

    @property
    def comp_feats_batch_frequency(self) -> int:
        return math.ceil(self.comp_feats_frequency / self.batch_size)

    def to_json(self) -> dict:
        d = asdict(self)
        for k in TUPLES:
            d[k] = list(d[k])
        return d

    def with_changes(self, changes: dict, where: str) -> TrainOptions:
        """These options with ``changes`` for a resume: RESUMABLE ones are applied, any other that
        differs is refused with the list of differences."""
        current, diffs = self.to_json(), []
        for k, v in changes.items():
            if k not in current:
                raise NetVladPortError(f"unknown training option {k!r}")
            new = list(v) if isinstance(v, (tuple, list)) else v
            if new != current[k]:
                if k in RESUMABLE:
                    current[k] = new
                else:
                    diffs.append(f"{k} {current[k]!r} -> {new!r}")
        if diffs:
            raise NetVladPortError(
                f"{where}: --resume with options that differ from the run's: {'; '.join(diffs)} (only "
                f"{', '.join(RESUMABLE)} may change; start a new run with --force to change the others)"
            )
        return TrainOptions.from_json(current)

    @classmethod
    def from_json(cls, d: dict) -> TrainOptions:
        d = {k: v for k, v in d.items() if k not in ("net_id", "layer_name", "method", "extra")}  # older runs
        for k in TUPLES:
            d[k] = tuple(d.get(k, getattr(cls, k, ())))
        return cls(**d)
