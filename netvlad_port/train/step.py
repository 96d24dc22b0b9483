"""One training batch ([docs/matlab.md#sgd-step](../../docs/matlab.md#sgd-step)): the sampler turns the
batch's queries into tuples, each tuple runs fresh through the trainable layers, its loss and any
auxiliary terms are back-propagated, gradients and the pair count T are summed over ranks, and one SGD
update of sum(L) / T is made.

Every rank samples every tuple (same generator, same cache); rank r runs tuples r, r + W, ..., so the
update equals the single-process one. BatchNorm running statistics (attention modules) are averaged
over ranks after each step.

``forward`` sets what one forward pass holds, which is what BatchNorm layers see in train mode:
``tuple`` (MATLAB: each tuple's images), ``batch`` (STML, ``tasks/train.py:44-54``: every tuple of the
batch -- of the rank -- in one pass) or ``siamese`` (GCL, ``train.py:142-167``, ``networks.py:55-58``:
mini-batches of 2 pairs, the 2 queries in one pass and the 2 partners in another; an odd last pair is
dropped). The objective is the same sum of losses over the pairs used, divided by their number.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import NetVladPortError
from ..layers import matlab_flatten
from ..matlab_random import matlab_round
from .samplers import MiningContext, SamplerEntry


@dataclass
class TupleInputs:
    """The frozen layers' output for a tuple's images (``trunk``), and MATLAB's jitter draws."""

    trunk: object
    opts: object
    device: torch.device
    model: nn.Module  # its parameters' dtype is the input's (float64 runs)

    def jitter(self, rng) -> tuple[int | None, bool]:
        """jitterScale and jitterFlip draws of one tuple: the shorter side round(s * that of the first
        db image) for ``s = jitterScale(randsample(numel, 1))``, and a flip when ``rand() > 0.5``."""
        o = self.opts
        shorter = None
        if o.jitter_scale:
            h, w = self.trunk.sizes[0]
            s = o.jitter_scale[int(rng.randsample(len(o.jitter_scale), 1)[0]) - 1]
            shorter = matlab_round(s * min(h, w))
        flip = bool(o.jitter_flip and rng.rand()[0, 0] > 0.5)
        return shorter, flip

    def __call__(self, ids, shorter: int | None = None, flip: bool = False) -> torch.Tensor:
        """The trunk output of images ``ids``, rescaled or flipped first when jittered."""
        if shorter is None and not flip:
            x = self.trunk.get(ids)
        else:
            from ..images import read_image

            ims = [read_image(self.trunk.root / self.trunk.names[i], shorter) for i in ids]
            with torch.no_grad():
                x = self.trunk.frozen(torch.stack([im.flip(-1) if flip else im for im in ims]).to(self.device))
        return x.to(next(self.model.parameters()).dtype)


def sample_batch(sampler: SamplerEntry, ctx: MiningContext, query_ids, loss, jitter) -> list:
    """The batch's tuples (None where a query has none), each with its labels when the loss takes them
    and its jitter, drawn after its negatives as MATLAB does."""
    tuples = []
    for iq in query_ids:
        tup = sampler.sample(ctx, int(iq))
        if tup is not None:
            if loss.labels and tup.labels is None:
                tup.labels = ctx.db.similarity(tup.query, [tup.positive, *tup.negatives], loss.labels)
            tup.jitter = jitter(ctx.rng)
        tuples.append(tup)
    return tuples


def tuple_images(db, tup) -> list[int]:
    """A tuple's rows in the trunk: the query (after the db images), the positive, the negatives."""
    return [db.num_images + tup.query, tup.positive] + [int(j) for j in tup.negatives]


class Step:
    """Forward, loss, terms, all-reduce and update of one batch's tuples."""

    def __init__(self, model: nn.Module, first: int, params, optimizer, loss, loss_params: dict, terms, inputs,
                 precision: str, rank: int = 0, world: int = 1, forward: str = "tuple"):  # fmt: skip
        self.model, self.first, self.params, self.optimizer = model, first, params, optimizer
        self.loss, self.loss_params, self.terms, self.inputs = loss, loss_params, terms, inputs
        self.precision, self.rank, self.world, self.forward = precision, rank, world, forward
        if forward == "siamese" and terms:
            raise NetVladPortError(f"--forward siamese (GCL's pairs) takes no auxiliary loss term "
                                   f"({', '.join(t.name for t in terms)})")  # fmt: skip

    def _autocast(self):
        if self.precision in ("fp32", "tf32"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.inputs.device.type, dtype=dtype)

    def _zero_grads(self) -> None:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad.zero_()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The trainable layers on ``x``: one row of features per image."""
        with self._autocast():
            out = self.model.run(x, self.first)
        return matlab_flatten(out).to(torch.float64 if x.dtype == torch.float64 else torch.float32)

    def _tuple(self, db, tup, sums: torch.Tensor) -> tuple[float, int]:
        """Forward and backward one tuple; adds its terms to ``sums``; returns (logged loss, pairs)."""
        ids = tuple_images(db, tup)
        feats = self._run(self.inputs(ids, *tup.jitter))
        res = self.loss(feats[0], feats[1], feats[2:], labels=tup.labels, **self.loss_params)
        total = res.loss if res.n_pairs > 0 else None
        for k, term in enumerate(self.terms):
            g = term(tup, ids)
            sums[k] += g.item()
            total = g if total is None else total + g
        if total is not None:
            total.backward()
        return res.logged.item(), res.n_pairs

    def _batch(self, db, tups: list, sums: torch.Tensor) -> tuple[list[float], int]:
        """STML's forward: every tuple's images in one pass, each tuple's loss as in :meth:`_tuple`; the
        terms once, on the pass's images (a tuple-like with the batch's ``tuples`` and no jitter).
        Returns (each tuple's logged loss, pairs)."""
        ids = [tuple_images(db, t) for t in tups]
        feats = self._run(self.inputs([i for row in ids for i in row]))
        total, logged, pairs, at = None, [], 0, 0
        for tup, row in zip(tups, ids):
            f, at = feats[at : at + len(row)], at + len(row)
            res = self.loss(f[0], f[1], f[2:], labels=tup.labels, **self.loss_params)
            if res.n_pairs > 0:
                total = res.loss if total is None else total + res.loss
            logged.append(res.logged.item())
            pairs += res.n_pairs
        whole = SimpleNamespace(tuples=tups, jitter=(None, False))
        for k, term in enumerate(self.terms):
            g = term(whole, [i for row in ids for i in row])
            sums[k] += g.item()
            total = g if total is None else total + g
        if total is not None:
            total.backward()
        return logged, pairs

    def _siamese(self, db, pair: list) -> tuple[list[float], int]:
        """GCL's mini-batch of 2 pairs (``train.py:142-159``): the queries in one pass, the partners in
        another; backward of their summed losses. Returns (each pair's logged loss, pairs)."""
        fq = self._run(self.inputs([db.num_images + t.query for t in pair]))
        fp = self._run(self.inputs([t.positive for t in pair]))
        total, logged = None, []
        for k, tup in enumerate(pair):
            res = self.loss(fq[k], fp[k], fp[k][None][:0], labels=tup.labels, **self.loss_params)
            total = res.loss if total is None else total + res.loss
            logged.append(res.logged.item())
        total.backward()
        return logged, len(pair)

    def _groups(self, tuples: list) -> list[list]:
        """The batch's units of work, one forward (or one siamese mini-batch) each, before the rank split."""
        real = [t for t in tuples if t is not None]
        if self.forward == "siamese":
            return [real[k : k + 2] for k in range(0, len(real) - 1, 2)]  # the odd last pair dropped
        return [real]

    def __call__(self, db, tuples: list, counts_empty: np.ndarray) -> tuple[float, dict[str, float]]:
        """One update from ``tuples`` (None: no tuple; ``counts_empty[k]``: that None counts as a zero
        loss). Returns the mean tuple loss (``obj.train.loss``: 0 when no query has a tuple) and each
        term's batch value (summed, divided by the batch's pairs)."""
        self.model.train()
        self._zero_grads()
        for term in self.terms:
            term.begin_batch([t for t in tuples if t is not None])
        loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of losses, number of tuples)
        pairs = torch.zeros(1, dtype=torch.float64)
        term_sums = torch.zeros(len(self.terms), dtype=torch.float64)
        if self.forward != "tuple":
            self._grouped(db, tuples, counts_empty, loss_sum, pairs, term_sums)
        for k, tup in enumerate(tuples if self.forward == "tuple" else ()):
            if k % self.world != self.rank:
                continue
            if tup is None:  # no positive: skipped; trainWeakly without violators: loss 0 is recorded
                loss_sum[1] += bool(counts_empty[k])
                continue
            logged, n_pairs = self._tuple(db, tup, term_sums)
            pairs += n_pairs
            loss_sum += torch.tensor([logged, 1.0], dtype=torch.float64)
        grads = [p.grad for p in self.params]
        if self.world > 1:
            self._all_reduce(grads, pairs, loss_sum, term_sums)
        terms = {t.name: term_sums[k].item() / max(pairs.item(), 1.0) for k, t in enumerate(self.terms)}
        if pairs.item() > 0:
            for g in grads:
                g.div_(pairs.item())
            self.optimizer.step()
        return (loss_sum[0].item() / loss_sum[1].item() if loss_sum[1].item() else 0.0), terms  # MATLAB: 0 if none

    def _grouped(self, db, tuples, counts_empty, loss_sum, pairs, term_sums) -> None:
        """The ``batch`` and ``siamese`` forwards: rank r runs groups r, r + W, ... (``batch``: its share of
        the tuples in one pass); adds to the sums as the per-tuple loop does."""
        loss_sum[1] += float(np.sum(counts_empty[[t is None for t in tuples]])) if self.rank == 0 else 0.0
        groups = self._groups(tuples)
        if self.forward == "batch":
            groups = [groups[0][self.rank :: self.world]]
        for k, group in enumerate(groups):
            if not group or (self.forward == "siamese" and k % self.world != self.rank):
                continue
            logged, n = self._batch(db, group, term_sums) if self.forward == "batch" else self._siamese(db, group)
            pairs += n
            loss_sum += torch.tensor([sum(logged), len(logged)], dtype=torch.float64)

    def _all_reduce(self, grads, *sums) -> None:
        for t in (*grads, *sums):
            if t.numel():
                dist.all_reduce(t)
        for m in self.model.modules():  # BatchNorm statistics (attention modules): the mean over ranks
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                for b in (m.running_mean, m.running_var):
                    dist.all_reduce(b)
                    b.div_(self.world)
