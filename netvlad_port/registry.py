"""Name -> entry tables for the pluggable pieces (layer types, losses, samplers, terms, datasets, ...)
and the plug-ins that fill them.

Each table is filled by the core module that defines its built-in entries (imported on first lookup, so
importing a table never imports torch or the datasets) and by plug-ins: packages that declare an entry
point in the group ``netvlad_port.plugins`` (GCL and sTML are two, declared in ``setup.py``; a third
party's works the same way, docs/extending.md#plug-ins). Plug-ins are imported only when a name is not
a built-in one or when a table is listed, so a plain network never loads them. An unknown name is a
:class:`NetVladPortError` that lists the valid ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import NetVladPortError

T = TypeVar("T")
PLUGIN_GROUP = "netvlad_port.plugins"
_plugins: dict[str, str] | None = None  # name -> entry point, once loaded


def load_plugins() -> dict[str, str]:
    """Import every plug-in of the ``netvlad_port.plugins`` entry-point group once (calling the object
    an entry point names when it is callable); returns {name: entry point}. A plug-in that fails to
    load is one line naming it."""
    global _plugins
    if _plugins is not None:
        return _plugins
    from importlib.metadata import entry_points

    _plugins = {}
    for ep in entry_points(group=PLUGIN_GROUP):
        if _plugins.get(ep.name) == ep.value:  # the same distribution seen twice on sys.path
            continue
        _plugins[ep.name] = ep.value
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except NetVladPortError as exc:
            raise NetVladPortError(f"plug-in {ep.name!r} ({ep.value}): {exc}") from None
        except Exception as exc:
            raise NetVladPortError(
                f"plug-in {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            ) from exc
    return _plugins


class Registry(Generic[T]):
    """Entries by name; ``key`` canonicalises names (e.g. case and ``-``/``_``) for lookup."""

    def __init__(self, kind: str, builtins: str, key: Callable[[str], str] = str):
        self.kind, self._builtins, self._key = kind, builtins, key
        self._entries: dict[str, T] = {}
        self._names: dict[str, str] = {}  # canonical key (names and aliases) -> registered name
        self._loaded = False

    def _load(self, plugins: bool = False) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self._builtins)
        if plugins:
            load_plugins()

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

    def _find(self, name: str) -> str | None:
        self._load()
        found = self._names.get(self._key(name))
        if found is None:  # not a built-in: a plug-in may define it
            self._load(plugins=True)
            found = self._names.get(self._key(name))
        return found

    def name(self, name: str) -> str:
        """The registered name ``name`` (or an alias of it) stands for."""
        found = self._find(name)
        if found is None:
            raise NetVladPortError(f"unknown {self.kind} {name!r}: expected one of {', '.join(self)}")
        return found

    def __getitem__(self, name: str) -> T:
        return self._entries[self.name(name)]

    def get(self, name: str) -> T | None:
        found = self._find(name)
        return self._entries[found] if found is not None else None

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        self._load(plugins=True)
        return iter(list(self._entries))

    def items(self, plugins: bool = True) -> list[tuple[str, T]]:
        """(name, entry) pairs; ``plugins=False``: without loading plug-ins (those loaded already count)."""
        self._load(plugins=plugins)
        return list(self._entries.items())
