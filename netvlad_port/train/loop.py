"""The training loop of ``trainWeakly`` and deepIBL's six ``train*.m``: the schedule, the cache
refreshes and the logging ([docs/matlab.md#training-loop](../../docs/matlab.md#training-loop)).

Per epoch e: ``rng(42 + e)``, a query permutation, ``floor(numQueries / batchSize)`` batches (the
rest dropped). A checkpoint every ``saveFrequency`` queries; the whole train cache (query and db
features) recomputed every ``compFeatsFrequency`` queries (not at the first or last batch), the
interval doubling at each lr drop (epochs 6, 11, ...: lr halved). Each batch is one :class:`Step`
(``step.py``). At epoch end: save, val recall on ``nTestSample`` fixed queries (``rng(43)``,
``validation.py``), train cache refresh. ``pick_best_epoch`` then ``addPCA`` give the final model.

With ``step_queries`` (GCL's schedule, ``steps.py``) an epoch is one GCL step: the step's queries each
get one pair, the pairs are shuffled into batches, validation runs on every val query after each step;
no train feature cache is kept. ``select_by`` picks the best epoch by that recall.

Multi-process (torchrun, gloo/nccl): the step sums gradients over ranks; cache refreshes are split
across ranks and gathered.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..devices import resolve_device
from ..distributed import world
from ..errors import NetVladPortError
from ..layers import matlab_flatten
from ..matlab_random import make_rng, matlab_round
from ..model import SimpleNN
from ..networks import ATTENTION
from ..precision import exact_math
from ..retrieval import evaluation_view
from . import validation
from .checkpoint import load_checkpoint, read_start_feats, save_checkpoint, write_start_feats
from .options import TrainOptions
from .samplers import MiningContext
from .schedule import lr_drops, out_of_patience
from .state import EventLog, History, restore_state, run_state, truncate_log
from .step import Step, TupleInputs, sample_batch
from .steps import step_plan
from .terms import TermContext, build_terms
from .trunk import TrunkCache
from .update import back_prop_to_layer, deepibl_sgd, layer_index, param_groups

TRAIN_SEED = 42


def image_paths(db) -> list[str]:
    """Every image of a split as the trunk rows hold them: the db images, then the queries."""
    return [str(db.db_image(i)) for i in range(db.num_images)] + [str(db.q_image(i)) for i in range(db.num_queries)]


class Trainer:
    """State of one training run; ``run()`` trains to the end (or ``stop_after`` batches)."""

    def __init__(self, spec, db_train, db_val, opts: TrainOptions, out_dir, progress: bool = False, log=print):
        if db_val is not None:  # validated as test --protocol evaluates (MSLS under gcl: panoramas ranked)
            db_val = evaluation_view(db_val, opts.val_protocol)
        self.opts, self.db_train, self.db_val = opts, db_train, db_val
        self.out_dir = Path(out_dir)
        self.rank, self.world = world()
        self.events = EventLog(self.out_dir, self.rank == 0)
        self.progress, self.log = progress and self.rank == 0, log if self.rank == 0 else (lambda *a, **k: None)
        self._setup_objective(opts)
        exact_math(deterministic=opts.precision == "fp32", tf32=opts.precision == "tf32")
        self.device = resolve_device(opts.device)
        self.model = SimpleNN(spec).to(self.device)
        self.first = layer_index(self.model, opts.back_prop_to_layer)
        attention = {a.layer_type for _, a in ATTENTION.items()}
        self.cache_skips = set() if self.sampler.cache_attention else {
            i for i, layer in enumerate(spec.layers) if layer.type in attention and i >= self.first}  # fmt: skip
        self.params = back_prop_to_layer(self.model, opts.back_prop_to_layer, opts.fix_layers)
        groups = param_groups(self.model, self.params, opts.learning_rate, opts.weight_decay)
        self.optimizer = deepibl_sgd(groups, opts.learning_rate, opts.momentum, opts.weight_decay)
        self.epoch, self.batch = opts.start_epoch, 1
        self.lr = opts.learning_rate
        self.comp_freq = opts.comp_feats_batch_frequency
        for e in range(2, opts.start_epoch):  # MATLAB replays the schedule of the skipped epochs
            self.lr_drop(e)
        self.set_lr()
        self.neg_cache: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(db_train.num_queries)]
        self.rng = make_rng(opts.rng, TRAIN_SEED + self.epoch)
        self.history = History()
        self.train_feats: np.ndarray | None = None  # rows: db images, then queries
        self.timing = {"cache_refresh": 0.0, "tuples": 0.0, "trunk": 0.0}
        self.terms = build_terms(TermContext(self.model, self.first, opts, db_train, image_paths(db_train)))
        t = time.perf_counter()
        self.trunks = {key: self._trunk(db) for key, db in (("train", db_train), ("val", db_val)) if db is not None}
        self.timing["trunk"] = time.perf_counter() - t
        inputs = TupleInputs(self.trunks["train"], opts, self.device, self.model)
        self.step_fn = Step(self.model, self.first, self.params, self.optimizer, self.loss, self.loss_params,
                            self.terms, inputs, opts.precision, self.rank, self.world, opts.forward)  # fmt: skip
        self.jitter = inputs.jitter
        self.last_terms: dict[str, float] = {}

    def _setup_objective(self, opts: TrainOptions) -> None:
        """The loss, its sampler and parameters, checked before anything is computed. The margin that
        drives the loss (``--loss-param margin`` or ``margin``) also drives mining and the rank loss."""
        self.loss, self.sampler = opts.objective()
        self.loss_params = {**{k: getattr(opts, k) for k in self.loss.params}, **opts.loss_params}
        self.margin = float(opts.loss_params.get("margin", opts.margin))

    def _trunk(self, db) -> TrunkCache:
        o = self.opts
        names = image_paths(db)
        cache_dir = Path(o.trunk_dir) if o.trunk_dir else self.out_dir / "trunk_cache"
        return TrunkCache(self.model, self.first, Path(""), names, mode=o.trunk_cache, fp16=o.trunk_fp16,
                          batch_size=o.compute_batch_size, device=o.device, cache_dir=cache_dir,
                          progress=self.progress)  # fmt: skip

    # --- features ------------------------------------------------------------------------
    @torch.no_grad()
    def all_feats(self, key: str) -> np.ndarray:
        """Every image's training output (postL2) through the trainable layers, split across ranks."""
        trunk = self.trunks[key]
        self.model.eval()
        n = len(trunk.names)
        feats = None
        for k, ids in enumerate(trunk.groups(self.opts.compute_batch_size)):
            if k % self.world != self.rank:
                continue
            x = trunk.get(ids)
            out = matlab_flatten(self._cache_run(x) if key == "train" else self.model.run(x, self.first)).float()
            out = out.cpu().numpy()
            if feats is None:
                feats = np.zeros((n, out.shape[1]), np.float32)
            feats[ids] = out
        if self.world > 1:
            t = torch.from_numpy(feats if feats is not None else np.zeros((n, self.model.output_dim), np.float32))
            dist.all_reduce(t)  # each row is computed by exactly one rank
            feats = t.numpy()
        return feats

    def _cache_run(self, x: torch.Tensor) -> torch.Tensor:
        """The trainable layers for the train cache, less ``cache_skips`` (``SamplerEntry.cache_attention``)."""
        if not self.cache_skips:
            return self.model.run(x, self.first)
        for i in range(self.first, len(self.model.layers)):
            x = x if i in self.cache_skips else self.model.layers[i](x)
        return x

    def start_feats(self, key: str, db_fn: str, q_fn: str) -> np.ndarray:
        """The start network's features (``dbCheckpoint0`` / ``qCheckpoint0``): read from MATLAB's .bin
        files when both exist, else computed (and written when named, as MATLAB writes them)."""
        db = self.db_train if key == "train" else self.db_val
        feats = read_start_feats(db, db_fn, q_fn, self.model.output_dim)
        if feats is not None:
            return feats
        if key == "train":
            self.refresh_train_cache()
            feats = self.train_feats
        else:
            feats = self.all_feats(key)
        if db_fn and self.rank == 0:
            write_start_feats(db, db_fn, q_fn, feats)
        return feats

    def refresh_train_cache(self) -> None:
        t = time.perf_counter()
        self.train_feats = self.all_feats("train")
        self.timing["cache_refresh"] += time.perf_counter() - t

    def evaluate(self, key: str = "val", feats: np.ndarray | None = None):
        """``testNet`` on the val (or train) split: (recalls, rank loss)."""
        db = self.db_val if key == "val" else self.db_train
        return validation.evaluate(db, self.all_feats(key) if feats is None else feats, self.opts, self.margin)

    # --- one batch --------------------------------------------------------------------------
    def step(self, query_ids=None, tuples: list | None = None) -> float:
        """Sample (unless ``tuples`` are given: a GCL step's pairs), forward and backward the batch's
        tuples; one SGD update. Returns the mean tuple loss (``obj.train.loss``: 0 when no query of the
        batch has a tuple)."""
        t0 = time.perf_counter()
        if tuples is None:
            tuples = sample_batch(self.sampler, self._context(), query_ids, self.loss, self.jitter)
            counts = [self.sampler.empty_counts and t is None and len(self.db_train.nontrivial_pos_q(int(iq))) > 0
                      for iq, t in zip(query_ids, tuples)]  # fmt: skip
        else:
            counts = [False] * len(tuples)
        loss, self.last_terms = self.step_fn(self.db_train, tuples, np.asarray(counts, bool))
        self.timing["tuples"] += time.perf_counter() - t0
        return loss

    def _context(self, rng=None) -> MiningContext:
        return MiningContext(self.db_train, self.train_feats, self.neg_cache, rng or self.rng, self.opts, self.margin,
                             self.loss)  # fmt: skip

    # --- the run ----------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Everything a resume needs besides the weights: (JSON-able state, tensors)."""
        return run_state(self)

    def load_state_dict(self, state: dict, tensors: dict[str, np.ndarray]) -> None:
        restore_state(self, state, tensors)

    def save(self, tag: str = "latest") -> None:
        if self.rank == 0:
            state, tensors = self.state_dict()
            save_checkpoint(self.out_dir / f"checkpoint_{tag}", self.model.to_spec(), state, tensors)

    def _start(self) -> None:
        """The start network's val recall (``test0``) and train cache, unless resumed past them."""
        o = self.opts
        if self.train_feats is None:  # in GCL's steps: always (no train cache)
            if o.test0 and self.db_val is not None and self.history.pretrain_val_recall is None:
                feats = self.start_feats("val", o.db_checkpoint0_val, o.q_checkpoint0_val)
                self.history.pretrain_val_recall = self.evaluate("val", feats)[0]
                text = validation.recall_text(self.history.pretrain_val_recall, o.recall_ns)
                self.log(f"off-the-shelf val recall@1/5/10: {text}")
            if not o.step_queries:
                self.train_feats = self.start_feats("train", o.db_checkpoint0, o.q_checkpoint0)

    def run(self, stop_after: int | None = None) -> Trainer:
        """Train until ``n_epoch`` (or until ``stop_after`` more batches have run)."""
        o = self.opts
        n_batches = self.db_train.num_queries // o.batch_size
        if n_batches == 0 and not o.step_queries:
            raise NetVladPortError(f"{self.db_train.name}: fewer queries ({self.db_train.num_queries}) than one batch")
        self._start()
        ran = 0
        while self.epoch <= o.n_epoch and not self.out_of_patience():
            e = self.epoch
            if o.step_queries:  # GCL's step: its pairs, drawn at its start (and again on a resume)
                batches = step_plan(self, e, TRAIN_SEED)
            else:
                order = make_rng(o.rng, TRAIN_SEED + e).randperm(self.db_train.num_queries) - 1
                batches = [order[(b - 1) * o.batch_size : b * o.batch_size] for b in range(1, n_batches + 1)]
            if self.batch == 1:
                if not o.step_queries:
                    self.rng = make_rng(o.rng, TRAIN_SEED + e)  # rng(42 + e); trainOrder = randperm(...)
                    self.rng.randperm(self.db_train.num_queries)  # the stream continues after randperm
                self.lr_drop(e)
                self.set_lr()
            bar = tqdm(total=len(batches) * o.batch_size, initial=(self.batch - 1) * o.batch_size, unit="query",
                       desc=f"epoch {e}/{o.n_epoch}", disable=not self.progress, leave=False)  # fmt: skip
            try:
                ran, stopped = self._batches(batches, bar, ran, stop_after)
            finally:
                bar.close()
            if stopped:
                return self
            self.end_epoch()
        return self

    def _batches(self, batches: list, bar, ran: int, stop_after: int | None) -> tuple[int, bool]:
        """The rest of this epoch's batches (query ids, or a GCL step's pairs); returns (batches run so
        far, stopped by ``stop_after``)."""
        o, e, n_batches = self.opts, self.epoch, len(batches)
        while self.batch <= n_batches:
            b = self.batch
            if b % o.save_batch_frequency == 0 and ran:
                self.save()
            if stop_after is not None and ran >= stop_after:
                return ran, True
            if b % self.comp_freq == 0 and b != 1 and b != n_batches and self.sampler.uses_cache:
                t = time.perf_counter()
                self.refresh_train_cache()
                msg = f"epoch {e} batch {b}: train cache refreshed ({time.perf_counter() - t:.1f} s)"
                if self.progress:
                    bar.write(msg)
                else:
                    self.log(msg)
            loss = self.step(tuples=batches[b - 1]) if o.step_queries else self.step(batches[b - 1])
            self.history.batch_loss.append(loss)
            self.event({"epoch": e, "batch": b, "lr": self.lr, "loss": loss, **self.last_terms})
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.lr:g}", refresh=False)
            bar.update(o.batch_size)
            self.batch += 1
            ran += 1
        return ran, False

    def lr_drop(self, e: int) -> None:
        """At the start of epoch e, when the schedule drops: lr / lrDownFactor (MATLAB's rule: and the cache
        refresh interval round(interval * lrDownFactor))."""
        o = self.opts
        if lr_drops(e, o.lr_schedule, o.lr_down_freq):
            self.lr /= o.lr_down_factor
            if o.lr_schedule == "matlab":
                self.comp_freq = matlab_round(self.comp_freq * o.lr_down_factor)

    def out_of_patience(self) -> bool:
        o = self.opts
        at = list(o.recall_ns).index(o.select_by)
        if not out_of_patience(self.history.val_recall, at, o.patience, o.epoch_test_frequency):
            return False
        self.log(f"val recall@{o.select_by} did not improve for {o.patience} epochs: stopping (--patience)")
        return True

    def set_lr(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr * g.get("lr_mult", 1.0)

    def event(self, record: dict) -> None:
        """One line of ``log.jsonl`` (and TensorBoard scalars), step = the batches run."""
        self.events(record, len(self.history.batch_loss))

    def save_epoch_weights(self) -> None:
        if self.rank == 0:
            from ..converted import save_converted

            spec = self.model.to_spec()
            spec.meta["epoch"] = self.epoch
            save_converted(spec, self.out_dir / f"epoch_{self.epoch:06d}", force=True)

    def end_epoch(self) -> None:
        e = self.epoch
        self.save_epoch_weights()
        test_now = e == self.opts.n_epoch or e % self.opts.epoch_test_frequency == 0
        if self.db_val is not None and test_now:
            recalls, rank = self.evaluate("val")
            self.history.val_recall[e], self.history.val_rankloss[e] = recalls, rank
            text = validation.recall_text(recalls, self.opts.recall_ns)
            self.log(f"epoch {e}: val recall@1/5/10 {text}, rank loss {rank:.4f}")
            ns = list(self.opts.recall_ns)
            at = {f"val_recall@{n}": recalls[ns.index(n)] for n in (1, 5, 10) if n in ns}
            self.event({"epoch": e, **at, "val_rankloss": rank})
        if not self.opts.step_queries:  # GCL's steps keep no train cache
            self.refresh_train_cache()
            if test_now:
                self.history.train_recall[e] = self.evaluate("train", self.train_feats)[0]
        self.epoch += 1
        self.batch = 1
        self.save()

    @classmethod
    def resume(cls, out_dir, db_train, db_val, progress: bool = False, log=print, **changes) -> Trainer:
        """The run in ``out_dir`` at its last checkpoint; ``changes``: options given again (only
        ``RESUMABLE`` ones may differ)."""
        folder = Path(out_dir) / "checkpoint_latest"
        spec, state, tensors = load_checkpoint(folder)
        opts = TrainOptions.from_json(state["options"]).with_changes(changes, str(out_dir))
        state["options"] = opts.to_json()
        trainer = cls(spec, db_train, db_val, opts, out_dir, progress, log)
        trainer.load_state_dict(state, tensors)
        if trainer.rank == 0:
            truncate_log(Path(out_dir) / "log.jsonl", trainer.epoch, trainer.batch)
        return trainer
