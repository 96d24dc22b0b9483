"""Auxiliary loss terms: objectives added to a tuple's loss beside the ranking loss (sTML's guidance of
the de-attention mask is one), one registry entry each, like the losses and samplers.

An entry's ``build(ctx)`` returns the term for a run, or None when the run's options leave it off (and
may refuse options first). A term sees the model only through what it attaches itself (forward hooks),
is told each batch's tuples first (``begin_batch``) and then gives, right after each tuple's forward
pass, that tuple's term (``__call__``). Its batch value, summed over ranks and divided by the batch's
pairs, is logged under its ``name``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..registry import Registry


@dataclass
class TermContext:
    """What a term is built from: the model, the index of its first trained layer, the options, the
    training data and the image path of each trunk row (db images, then queries)."""

    model: Any
    first: int
    opts: Any
    db: Any
    image_paths: list[str]


class Term(Protocol):
    name: str

    def begin_batch(self, tuples: list) -> None: ...

    def __call__(self, tup, image_ids: list[int]) -> Any: ...


@dataclass(frozen=True)
class TermEntry:
    name: str
    build: Callable[[TermContext], Term | None]
    doc: str = ""


TERMS: Registry[TermEntry] = Registry("loss term", builtins="netvlad_port.train.terms", key=str.lower)


def register_term(entry: TermEntry, replace: bool = False) -> TermEntry:
    return TERMS.register(entry.name, entry, replace=replace)


def build_terms(ctx: TermContext) -> list[Term]:
    """Every registered term the run's options turn on, in registration order."""
    return [t for _, entry in TERMS.items() if (t := entry.build(ctx)) is not None]
