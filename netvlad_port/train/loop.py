"""The training loop of ``trainWeakly`` and deepIBL's six ``train*.m``
([docs/matlab.md#training-loop](../../docs/matlab.md#training-loop)).

Per epoch e: ``rng(42 + e)``, a query permutation, ``floor(numQueries / batchSize)`` batches (the
rest dropped). A checkpoint every ``saveFrequency`` queries; the whole train cache (query and db
features) recomputed every ``compFeatsFrequency`` queries (not at the first or last batch), the
interval doubling at each lr drop (epochs 6, 11, ...: lr halved). Each batch mines one tuple per
query on the cache, runs it fresh, back-propagates it and makes one SGD update of sum(L) / T,
T = the (query, negative) pairs (triplet: the violators). At epoch end: save, val recall on
``nTestSample`` fixed queries (``rng(43)``), train cache refresh. ``pick_best_net`` then
``addPCA`` give the final model.

Multi-process (torchrun, gloo/nccl): every rank mines every tuple (same RNG stream, same cache),
rank r runs tuples r, r + W, ...; gradients and T are summed over ranks before the update, so it
equals the single-process update. Cache refreshes are split across ranks and gathered.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..devices import resolve_device
from ..errors import NetVladPortError
from ..layers import matlab_flatten
from ..losses import LOSSES
from ..matlab_random import make_rng, matlab_round
from ..model import SimpleNN
from ..plugins.gcl.sampler import sample_pair  # until the trainer takes samplers by name
from ..precision import exact_math
from ..retrieval import test_from_fn
from .checkpoint import load_checkpoint, save_checkpoint
from .mining import mine_tuple, sq_dists
from .options import TrainOptions
from .trunk import TrunkCache
from .update import back_prop_to_layer, deepibl_sgd, layer_index, param_groups

TRAIN_SEED, TEST_SEED = 42, 43


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


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """State of one training run; ``run()`` trains to the end (or ``stop_after`` batches)."""

    def __init__(self, spec, db_train, db_val, opts: TrainOptions, out_dir, progress: bool = False, log=print):
        self.opts, self.db_train, self.db_val = opts, db_train, db_val
        self.out_dir = Path(out_dir)
        self.rank, self.world = _world()
        self.progress, self.log = progress and self.rank == 0, log if self.rank == 0 else (lambda *a, **k: None)
        self._tb = None
        self.loss = LOSSES[opts.loss]
        if opts.exclude_very_hard and self.loss.mining != "violators":
            raise NetVladPortError(
                f"excludeVeryHard is trainWeakly's (--loss triplet); deepIBL's train*.m accept it and ignore it, "
                f"so it has no meaning for --loss {opts.loss}"
            )
        exact_math(deterministic=opts.precision == "fp32", tf32=opts.precision == "tf32")
        self.loss_params = {**{k: getattr(opts, k) for k in self.loss.params}, **opts.loss_params}
        self.mining_margin = None
        if self.loss.mining == "violators-l2":
            self.mining_margin = self.loss.mining_margin if opts.mining_margin is None else opts.mining_margin
        elif opts.mining_margin is not None:
            raise NetVladPortError(f"--mining-margin is for the losses mined by plain distances (stml, triplet-stml, "
                                   f"triplet-nanne), not --loss {opts.loss}")  # fmt: skip
        self.device = resolve_device(opts.device)
        self.model = SimpleNN(spec).to(self.device)
        self.guidance, self.deatt = self._guidance(opts, db_train)
        self.first = layer_index(self.model, opts.back_prop_to_layer)
        if self.deatt is not None and list(self.model.layers).index(self.deatt) < self.first:
            raise NetVladPortError(f"--guidance trains the de-attention mask, but '{self.deatt.name}' is below "
                                   f"backPropToLayer {opts.back_prop_to_layer} (frozen)")  # fmt: skip
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
        t = time.perf_counter()
        self.trunks = {}
        for key, db in (("train", db_train), ("val", db_val)):
            if db is None:
                continue
            names = [str(db.db_image(i)) for i in range(db.num_images)] + [
                str(db.q_image(i)) for i in range(db.num_queries)
            ]
            self.trunks[key] = TrunkCache(
                self.model,
                self.first,
                Path(""),
                names,
                mode=opts.trunk_cache,
                fp16=opts.trunk_fp16,
                batch_size=opts.compute_batch_size,
                device=opts.device,
                cache_dir=Path(opts.trunk_dir) if opts.trunk_dir else self.out_dir / "trunk_cache",
                progress=self.progress,
            )
        self.timing["trunk"] = time.perf_counter() - t

    def _guidance(self, opts: TrainOptions, db):
        """The de-attention mask's supervision (``--guidance``), or (None, None)."""
        from ..guidance import LOSSES as GUIDANCE_LOSSES
        from ..guidance import Guidance, dataset_root, deattention_layer

        if not opts.guidance:
            return None, None
        layer = deattention_layer(self.model)
        if layer is None:
            raise NetVladPortError("--guidance supervises a de-attention mask: add --attention deattention-v1 (or -v2)")
        if opts.guidance_loss not in GUIDANCE_LOSSES:
            raise NetVladPortError(
                f"guidance loss must be one of {', '.join(GUIDANCE_LOSSES)}, got {opts.guidance_loss!r}"
            )
        return Guidance(opts.guidance, dataset_root(db), opts.guidance_reject), layer

    def guidance_term(self, tup, ids, scale: float) -> torch.Tensor:
        """``scale`` x the mean over pixels of the squared error (or BCE) of the de-attention masks of one
        tuple's images against their targets (flipped with the images when jittered)."""
        from ..guidance import guidance_loss

        m = self.deatt.last_mask[:, 0]
        scale = scale / m[0].numel()
        names = self.trunks["train"].names
        t = torch.stack([self.guidance.target(names[i], tuple(m.shape[1:])) for i in ids]).to(m)
        if tup.jitter[1]:
            t = t.flip(-1)
        return scale * guidance_loss(m, t, self.opts.guidance_loss)

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
            out = matlab_flatten(self.model.run(trunk.get(ids), self.first)).float().cpu().numpy()
            if feats is None:
                feats = np.zeros((n, out.shape[1]), np.float32)
            feats[ids] = out
        if self.world > 1:
            t = torch.from_numpy(feats if feats is not None else np.zeros((n, self.model.output_dim), np.float32))
            dist.all_reduce(t)  # each row is computed by exactly one rank
            feats = t.numpy()
        return feats

    def start_feats(self, key: str, db_fn: str, q_fn: str) -> np.ndarray:
        """The start network's features (``dbCheckpoint0`` / ``qCheckpoint0``): read from MATLAB's
        float32 .bin files (D x N column-major) when both exist, else computed (and written when
        named, as MATLAB writes them)."""
        db = self.db_train if key == "train" else self.db_val
        paths = [Path(db_fn), Path(q_fn)] if db_fn and q_fn else []
        if (db_fn or q_fn) and not paths:
            raise NetVladPortError("dbCheckpoint0 and qCheckpoint0 (and their val pair) go together")
        if paths and all(p.is_file() for p in paths):
            dim = self.model.output_dim
            parts = []
            for path, n in zip(paths, (db.num_images, db.num_queries)):
                flat = np.fromfile(path, np.float32)
                if flat.size != n * dim:
                    raise NetVladPortError(f"{path}: {flat.size} values; expected {n} images x {dim} dimensions")
                parts.append(flat.reshape(n, dim))
            return np.concatenate(parts)
        if key == "train":
            self.refresh_train_cache()
            feats = self.train_feats
        else:
            feats = self.all_feats(key)
        if paths and self.rank == 0:
            from ..io_utils import atomic_file

            for path, rows in zip(paths, (feats[: db.num_images], feats[db.num_images :])):
                with atomic_file(path) as tmp:
                    np.ascontiguousarray(rows, np.float32).tofile(tmp)
        return feats

    def refresh_train_cache(self) -> None:
        t = time.perf_counter()
        self.train_feats = self.all_feats("train")
        self.timing["cache_refresh"] += time.perf_counter() - t

    # --- validation (testNet: testCore + testCoreRank) ------------------------------------
    def evaluate(self, key: str = "val", feats: np.ndarray | None = None):
        db = self.db_val if key == "val" else self.db_train
        feats = self.all_feats(key) if feats is None else feats
        n_db = db.num_images
        qids = self.test_sample(db.num_queries, self.opts.n_test_sample)
        res = test_from_fn(db, feats[:n_db], feats[n_db:][qids], recall_ns=self.opts.recall_ns, query_ids=qids)
        return res.recalls, self.rank_loss(db, feats[:n_db], feats[n_db:])

    def test_sample(self, n_queries: int, n_sample: int) -> np.ndarray:
        """``rng(43); randsample(nQueries, nSample)`` (0-based) when there are more queries, else all
        (``recallAtN``, ``testCoreRank``)."""
        if n_sample >= n_queries:
            return np.arange(n_queries)
        return make_rng(self.opts.rng, TEST_SEED).randsample(n_queries, n_sample) - 1

    def rank_loss(self, db, db_feats, q_feats) -> float:
        """``testCoreRank``, a diagnostic: over ``nTestRankSample`` queries with a non-trivial
        positive, the mean over ``nNegChoice`` random negatives of max(0, d^2_pos + margin - d^2_neg),
        d^2_pos the nearest non-trivial positive; the negatives drawn after a second ``rng(43)``."""
        qids = self.test_sample(db.num_queries, self.opts.n_test_rank_sample)
        rng = make_rng(self.opts.rng, TEST_SEED)
        vals = []
        for iq in qids:
            pos = db.nontrivial_pos_q(iq)
            if len(pos) == 0:
                continue
            negs = db.sample_negs_q(iq, self.opts.n_neg_choice, rng)
            d_p = sq_dists(q_feats[iq], db_feats[pos]).min()
            if len(negs):
                vals.append(np.maximum(0, d_p + self.opts.margin - sq_dists(q_feats[iq], db_feats[negs])).mean())
        return float(np.mean(vals)) if vals else float("nan")

    # --- one batch --------------------------------------------------------------------------
    def tuple_images(self, tup) -> list[int]:
        n_db = self.db_train.num_images
        return [n_db + tup.query, tup.positive] + [int(j) for j in tup.negatives]

    def step(self, query_ids) -> float:
        """Mine, forward and backward the batch's tuples; one SGD update. Returns the mean tuple loss
        (``obj.train.loss``: 0 when no query of the batch has a tuple)."""
        o = self.opts
        t0 = time.perf_counter()
        n_db = self.db_train.num_images
        tuples = []
        violators = self.loss.mining == "violators"
        for iq in query_ids:  # every rank mines every tuple: identical RNG stream and negative cache
            if self.loss.mining == "pairs":
                tup = sample_pair(self.db_train, int(iq), self.rng, self.loss.labels or "graded")
                if tup is not None:
                    tup.jitter = self.jitter()
                tuples.append(tup)
                continue
            tup = mine_tuple(
                self.db_train,
                int(iq),
                self.train_feats[n_db + iq],
                self.train_feats[:n_db],
                self.neg_cache,
                self.rng,
                o.n_neg_choice,
                o.n_neg_cap,
                o.n_neg_cache,
                margin=o.margin if violators else None,
                exclude_very_hard=o.exclude_very_hard,
                l2_margin=self.mining_margin,
            )
            if tup is not None:
                if self.loss.labels:
                    ids = [tup.positive, *tup.negatives]
                    tup.labels = self.db_train.similarity(tup.query, ids, self.loss.labels)
                tup.jitter = self.jitter()  # drawn per tuple after its negatives, as MATLAB does
            tuples.append(tup)
        self.model.train()
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad.zero_()
        loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of losses, number of tuples)
        pairs = torch.zeros(1, dtype=torch.float64)
        if self.guidance is not None:  # STML: sum(l) / nNeg + w * MSE over the batch's mask pixels
            done = [t for t in tuples if t is not None]
            n_pix = sum(len(self.tuple_images(t)) for t in done)
            guide_scale = o.guidance_weight * sum(len(t.negatives) for t in done) / max(n_pix, 1)
            guided = torch.zeros(1, dtype=torch.float64)
        for k, tup in enumerate(tuples):
            if k % self.world != self.rank:
                continue
            if tup is None:  # no positive: skipped; trainWeakly without violators: loss 0 is recorded
                if violators and self.nontrivial(query_ids[k]):
                    loss_sum[1] += 1
                continue
            ids = self.tuple_images(tup)
            x = self.trunk_input(ids, *tup.jitter)
            with self._autocast():
                out = self.model.run(x, self.first)
            feats = matlab_flatten(out).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
            res = self.loss(feats[0], feats[1], feats[2:], labels=tup.labels, **self.loss_params)
            total = res.loss if res.n_pairs > 0 else None
            if self.guidance is not None:
                g = self.guidance_term(tup, ids, guide_scale)
                guided += g.item()
                total = g if total is None else total + g
            if total is not None:
                total.backward()
            pairs += res.n_pairs
            loss_sum += torch.tensor([res.logged.item(), 1.0], dtype=torch.float64)
        grads = [p.grad for p in self.params]
        if self.world > 1:
            for g in grads:
                dist.all_reduce(g)
            dist.all_reduce(pairs)
            dist.all_reduce(loss_sum)
            if self.guidance is not None:
                dist.all_reduce(guided)
            for name, b in self.model.named_buffers():  # BatchNorm statistics (attention modules): the mean
                if name.rsplit(".", 1)[-1] in ("running_mean", "running_var"):
                    dist.all_reduce(b)
                    b.div_(self.world)
        if self.guidance is not None:
            self.last_guidance = guided.item() / max(pairs.item(), 1.0)  # w * MSE of the batch's masks
        if pairs.item() > 0:
            for g in grads:
                g.div_(pairs.item())
            self.optimizer.step()
        self.timing["tuples"] += time.perf_counter() - t0
        return loss_sum[0].item() / loss_sum[1].item() if loss_sum[1].item() else 0.0  # MATLAB: 0 if none

    def nontrivial(self, iq) -> bool:
        return len(self.db_train.nontrivial_pos_q(int(iq))) > 0

    def _autocast(self):
        import contextlib

        if self.opts.precision in ("fp32", "tf32"):
            return contextlib.nullcontext()
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16 if self.opts.precision == "bf16" else torch.float16
        )

    def jitter(self) -> tuple[int | None, bool]:
        """jitterScale and jitterFlip draws of one tuple: the shorter side round(s * that of the first
        db image) for ``s = jitterScale(randsample(numel, 1))``, and a flip when ``rand() > 0.5``."""
        o = self.opts
        shorter = None
        if o.jitter_scale:
            h, w = self.trunks["train"].sizes[0]
            s = o.jitter_scale[int(self.rng.randsample(len(o.jitter_scale), 1)[0]) - 1]
            shorter = matlab_round(s * min(h, w))
        flip = bool(o.jitter_flip and self.rng.rand()[0, 0] > 0.5)
        return shorter, flip

    def trunk_input(self, ids, shorter: int | None = None, flip: bool = False) -> torch.Tensor:
        """The frozen layers' output for a tuple's images, rescaled or flipped first when jittered."""
        if shorter is None and not flip:
            x = self.trunks["train"].get(ids)
        else:
            x = self._jittered(ids, shorter, flip)
        return x.to(next(self.model.parameters()).dtype)

    def _jittered(self, ids, shorter, flip) -> torch.Tensor:
        from ..images import read_image

        trunk = self.trunks["train"]
        ims = [read_image(trunk.root / trunk.names[i], shorter) for i in ids]
        x = torch.stack([im.flip(-1) if flip else im for im in ims]).to(self.device)
        with torch.no_grad():
            return trunk.frozen(x)

    # --- the run ----------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Everything a resume needs besides the weights: (JSON-able state, tensors)."""
        tensors = {
            f"momentum.{i}": self.optimizer.state[p]["momentum_buffer"].detach().cpu().numpy()
            for i, p in enumerate(self.params)
            if "momentum_buffer" in self.optimizer.state.get(p, {})
        }
        if self.train_feats is not None:
            tensors["train_feats"] = self.train_feats
        state = {
            "epoch": self.epoch,
            "batch": self.batch,
            "lr": self.lr,
            "comp_freq": self.comp_freq,
            "rng": self.rng.get_state(),
            "neg_cache": [c.tolist() for c in self.neg_cache],
            "history": self.history.to_json(),
            "options": self.opts.to_json(),
            "param_dtype": str(self.params[0].dtype) if self.params else "torch.float32",
        }
        return state, tensors

    def load_state_dict(self, state: dict, tensors: dict[str, np.ndarray]) -> None:
        if state["param_dtype"] == "torch.float64":
            self.model.double()
        self.epoch, self.batch, self.lr, self.comp_freq = (
            state["epoch"],
            state["batch"],
            state["lr"],
            state["comp_freq"],
        )
        self.set_lr()
        self.rng.set_state(state["rng"])
        self.neg_cache = [np.asarray(c, np.int64) for c in state["neg_cache"]]
        self.history = History.from_json(state["history"])
        for i, p in enumerate(self.params):
            if f"momentum.{i}" in tensors:
                self.optimizer.state[p]["momentum_buffer"] = torch.from_numpy(tensors[f"momentum.{i}"]).to(p)
        self.train_feats = tensors.get("train_feats")

    def save(self, tag: str = "latest") -> None:
        if self.rank == 0:
            state, tensors = self.state_dict()
            save_checkpoint(self.out_dir / f"checkpoint_{tag}", self.model.to_spec(), state, tensors)

    def run(self, stop_after: int | None = None) -> Trainer:
        """Train until ``n_epoch`` (or until ``stop_after`` more batches have run)."""
        o = self.opts
        n_batches = self.db_train.num_queries // o.batch_size
        if n_batches == 0:
            raise NetVladPortError(f"{self.db_train.name}: fewer queries ({self.db_train.num_queries}) than one batch")
        if self.train_feats is None:
            if o.test0 and self.db_val is not None and self.history.pretrain_val_recall is None:
                feats = self.start_feats("val", o.db_checkpoint0_val, o.q_checkpoint0_val)
                self.history.pretrain_val_recall = self.evaluate("val", feats)[0]
                self.log(f"off-the-shelf val recall@1/5/10: {self._fmt(self.history.pretrain_val_recall)}")
            self.train_feats = self.start_feats("train", o.db_checkpoint0, o.q_checkpoint0)
        ran = 0
        while self.epoch <= o.n_epoch:
            e = self.epoch
            order = make_rng(o.rng, TRAIN_SEED + e).randperm(self.db_train.num_queries) - 1
            if self.batch == 1:
                self.rng = make_rng(o.rng, TRAIN_SEED + e)  # rng(42 + e); trainOrder = randperm(...)
                self.rng.randperm(self.db_train.num_queries)  # the stream continues after randperm
                self.lr_drop(e)
                self.set_lr()
            bar = tqdm(total=n_batches * o.batch_size, initial=(self.batch - 1) * o.batch_size, unit="query",
                       desc=f"epoch {e}/{o.n_epoch}", disable=not self.progress, leave=False)  # fmt: skip
            try:
                while self.batch <= n_batches:
                    b = self.batch
                    if b % o.save_batch_frequency == 0 and ran:
                        self.save()
                    if stop_after is not None and ran >= stop_after:
                        return self
                    if b % self.comp_freq == 0 and b != 1 and b != n_batches and self.loss.mining != "pairs":
                        t = time.perf_counter()
                        self.refresh_train_cache()
                        msg = f"epoch {e} batch {b}: train cache refreshed ({time.perf_counter() - t:.1f} s)"
                        if self.progress:
                            bar.write(msg)
                        else:
                            self.log(msg)
                    loss = self.step(order[(b - 1) * o.batch_size : b * o.batch_size])
                    self.history.batch_loss.append(loss)
                    record = {"epoch": e, "batch": b, "lr": self.lr, "loss": loss}
                    if self.guidance is not None:
                        record["guidance_loss"] = self.last_guidance
                    self.event(record)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.lr:g}", refresh=False)
                    bar.update(o.batch_size)
                    self.batch += 1
                    ran += 1
            finally:
                bar.close()
            self.end_epoch()
        return self

    def lr_drop(self, e: int) -> None:
        """At the start of epoch e != 1 with rem(e, lrDownFreq) == 1: lr / lrDownFactor and the cache
        refresh interval round(interval * lrDownFactor)."""
        o = self.opts
        if e != 1 and e % o.lr_down_freq == 1:
            self.lr /= o.lr_down_factor
            self.comp_freq = matlab_round(self.comp_freq * o.lr_down_factor)

    def set_lr(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr * g.get("lr_mult", 1.0)

    def event(self, record: dict) -> None:
        """One line of ``log.jsonl`` (and TensorBoard scalars when tensorboard is installed)."""
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except Exception:  # tensorboard is optional
                self._tb = False
        if self._tb:
            step = len(self.history.batch_loss)
            for k, v in record.items():
                if k not in ("epoch", "batch") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

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
            self.log(f"epoch {e}: val recall@1/5/10 {self._fmt(recalls)}, rank loss {rank:.4f}")
            ns = list(self.opts.recall_ns)
            self.event(
                {
                    "epoch": e,
                    **{f"val_recall@{n}": recalls[ns.index(n)] for n in (1, 5, 10) if n in ns},
                    "val_rankloss": rank,
                }
            )
        self.refresh_train_cache()
        if test_now:
            self.history.train_recall[e] = self.evaluate("train", self.train_feats)[0]
        self.epoch += 1
        self.batch = 1
        self.save()

    def _fmt(self, recalls) -> str:
        ns = list(self.opts.recall_ns)
        return " ".join(f"{recalls[ns.index(n)] * 100:.1f}" for n in (1, 5, 10) if n in ns)

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
        return trainer


def pick_best_epoch(history: History, recall_ns) -> int:
    """``getBestEpoch``: max val recall@5; ties (|diff| < 1e-6) by recall@4, 3, 2, 1, then 10, 15, ..."""
    ns = list(recall_ns)
    order = [5, 4, 3, 2, 1] + [n for n in ns if n > 5]
    keys = [ns.index(n) for n in order if n in ns]
    best = None
    for e in sorted(history.val_recall):
        r = history.val_recall[e]
        if best is None:
            best = e
            continue
        rb = history.val_recall[best]
        for k in keys:
            if abs(r[k] - rb[k]) >= 1e-6:
                if r[k] > rb[k]:
                    best = e
                break
    if best is None:
        raise NetVladPortError("no epoch has a validation recall (epochTestFrequency must be 1)")
    return best
