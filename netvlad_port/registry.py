"""Name -> entry tables for the pluggable pieces: layer types, losses and dataset families.

Each table is filled by the modules that define its built-in entries (imported on first lookup, so
importing a table never imports torch or the datasets); users add their own with ``register``.
An unknown name is a :class:`NetVladPortError` that lists the valid ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import NetVladPortError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name; ``key`` canonicalises names (e.g. case and ``-``/``_``) for lookup."""

    def __init__(self, kind: str, builtins: str, key: Callable[[str], str] = str):
        self.kind, self._builtins, self._key = kind, builtins, key
        self._entries: dict[str, T] = {}
        self._names: dict[str, str] = {}  # canonical key (names and aliases) -> registered name
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self._builtins)

    def register(self, name: str, entry: T, aliases: tuple[str, ...] = (), replace: bool = False) -> T:
        """Add ``entry`` under ``name`` (and ``aliases``); a taken name needs ``replace=True``."""
        self._load()
        keys = [self._key(n) for n in (name, *aliases)]
        taken = [k for k in keys if self._names.get(k, name) != name]
        if (taken or name in self._entries) and not replace:
            raise NetVladPortError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        self._names.update(dict.fromkeys(keys, name))
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        self._names = {k: v for k, v in self._names.items() if v != name}

    def name(self, name: str) -> str:
        """The registered name ``name`` (or an alias of it) stands for."""
        self._load()
        try:
            return self._names[self._key(name)]
        except KeyError:
            raise NetVladPortError(f"unknown {self.kind} {name!r}: expected one of {', '.join(self)}") from None

    def __getitem__(self, name: str) -> T:
        return self._entries[self.name(name)]

    def get(self, name: str) -> T | None:
        self._load()
        key = self._names.get(self._key(name))
        return self._entries[key] if key is not None else None

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._entries))

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._entries.items())
