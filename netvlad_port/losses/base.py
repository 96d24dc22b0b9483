"""The loss interface and registry: every training loss is one pure function plus one registry line.

A loss takes one tuple's fresh features -- query ``q`` (D), positive ``p`` (D), negatives ``negs``
(M x D) -- and optionally graded ``labels`` (M + 1 similarities in [0, 1] of the positive and each
negative to the query, from the dataset), plus keyword hyperparameters. It returns the tuple's loss
as a tensor, or a :class:`LossOutput` when it also decides how many (query, negative) pairs count.
The trainer back-propagates ``loss`` and divides the batch's summed gradient by the batch's pairs
(deepIBL's update, [docs/matlab.md#sgd-step](../../docs/matlab.md#sgd-step)).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import NetVladPortError
from ..registry import Registry

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class LossOutput:
    loss: Tensor  # back-propagated for this tuple
    n_pairs: int  # (query, negative) pairs it adds to the batch divisor T
    value: Tensor | None = None  # logged instead of ``loss`` when they differ (trainWeakly: hinge over all)

    @property
    def logged(self) -> Tensor:
        return self.loss if self.value is None else self.value


@dataclass(frozen=True)
class LossEntry:
    """A registered loss. ``params``: training-option names passed to ``fn`` as keywords (e.g. the
    triplet ``margin``); ``mining``: the sampler that makes its tuples (``train.samplers.SAMPLERS``:
    ``"hardest"`` takes the nNegCap hardest negatives, ``"violators"`` only those within the margin,
    trainWeakly; plug-ins add theirs); ``labels``: the label kind tuples carry
    (``datasets.labels.LABELS``: ``"binary"``, a plug-in's ``"graded"``); ``sampler_params``: defaults
    the sampler reads for this loss (e.g. sTML's mining margin)."""

    name: str
    fn: Callable[..., Tensor | LossOutput]
    matlab: str = ""
    params: tuple[str, ...] = ()
    mining: str = "hardest"
    labels: str | None = None  # a label kind: tuples carry the dataset's similarity of each pair
    doc: str = ""
    sampler_params: dict = field(default_factory=dict)

    def check_params(self, params: dict) -> None:
        """Refuse ``--loss-param`` names the function does not take, before a run computes anything."""
        sig = inspect.signature(self.fn).parameters
        if any(p.kind is p.VAR_KEYWORD for p in sig.values()):
            return
        keywords = [(n, p) for n, p in list(sig.items())[3:] if n != "labels"]  # after q, p, negs
        takes = [n for n, p in keywords if p.kind is p.KEYWORD_ONLY or p.default is not p.empty]
        for name in params:
            if name not in takes:
                what = ", ".join(takes) or "no parameters"
                raise NetVladPortError(f"--loss-param {name}: --loss {self.name} takes {what}")

    def __call__(self, q: Tensor, p: Tensor, negs: Tensor, *, labels=None, **params) -> LossOutput:
        if labels is not None:
            params["labels"] = labels
        out = self.fn(q, p, negs, **params)
        return out if isinstance(out, LossOutput) else LossOutput(out, len(negs))


LOSSES: Registry[LossEntry] = Registry("loss", builtins="netvlad_port.losses", key=str.lower)


def register_loss(
    name: str,
    fn: Callable | None = None,
    *,
    matlab: str = "",
    params: tuple[str, ...] = (),
    mining: str = "hardest",
    labels: str | None = None,
    graded: bool = False,
    sampler_params: dict | None = None,
    replace: bool = False,
):
    """Register ``fn`` under ``name`` (the ``--loss`` choice); usable as a decorator. The sampler and
    label kind are looked up when a run starts (a plug-in may define them)."""

    def add(f: Callable) -> Callable:
        doc = (inspect.getdoc(f) or "").split("\n")[0]
        kind = labels or ("graded" if graded else None)
        entry = LossEntry(name, f, matlab, tuple(params), mining, kind, doc, dict(sampler_params or {}))
        LOSSES.register(name, entry, replace=replace)
        return f

    return add(fn) if fn is not None else add


def by_matlab_name(name: str) -> LossEntry:
    """The loss of a MATLAB training file (``trainGaussKernalInd``), as parity dumps name them."""
    for _, entry in LOSSES.items():
        if entry.matlab == name:
            return entry
    raise KeyError(f"no loss mirrors the MATLAB file {name}.m")


def tuple_loss(entry: LossEntry, feats: Tensor) -> Tensor:
    """Loss of one tuple given as rows [query, positive, negatives...] (deepIBL's ``feats`` columns)."""
    return entry(feats[0], feats[1], feats[2:]).loss
