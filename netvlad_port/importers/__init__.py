"""Checkpoints of the PyTorch-born systems as networks: ``import_checkpoint(path)`` reads a ``.pth``
safely (``pth.read_pth``), finds which original saved it from its keys (or takes ``source``), maps every
key onto our layers and returns a validated :class:`NetSpec` with the original's preprocessing in
``meta`` ([docs/pytorch_models.md](../../docs/pytorch_models.md)).

Importers are registry entries: Nanne's pytorch-NetVlad (``nanne``) and torchvision's ImageNet classifiers
(``torchvision``) are built in; the GCL and sTML wings register ``gcl`` and ``stml``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import NetFormatError
from ..registry import Registry

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt")  # torch.save's files, whatever their content
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # torchvision's Normalize, all three


@dataclass(frozen=True)
class Importer:
    """One original's checkpoint layout. ``detect(state, info)`` scores how surely a checkpoint is this
    original's (0: not at all); ``build(keys, info, options)`` makes the layers and meta from a
    :class:`Keys` of the state_dict, taking every key it maps."""

    name: str
    detect: Callable[[dict, dict], int]
    build: Callable[..., object]
    description: str = ""


IMPORTERS: Registry[Importer] = Registry("checkpoint source", builtins="netvlad_port.importers.builtin")


def register_importer(entry: Importer, replace: bool = False) -> Importer:
    return IMPORTERS.register(entry.name, entry, replace=replace)


class Keys:
    """A state_dict whose entries an importer takes by prefix; what is left at the end is refused by name."""

    def __init__(self, state: dict, where: str):
        self.state, self.where = state, where
        self._taken: set[str] = set()

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix + ".") for k in self.state)

    def take(self, prefix: str, required: bool = True) -> dict:
        """The entries under ``prefix.`` with it removed (``required``: at least one)."""
        n = len(prefix) + 1
        keys = [k for k in self.state if k.startswith(prefix + ".")]
        if required and not keys:
            raise NetFormatError(f"{self.where}: no {prefix}.* weights")
        self._taken.update(keys)
        return {k[n:]: self.state[k] for k in keys}

    def finish(self) -> None:
        left = [k for k in self.state if k not in self._taken]
        if left:
            raise NetFormatError(f"{self.where}: unexpected key{'s' * (len(left) > 1)} "
                                 f"{', '.join(left[:5])}{' ...' if len(left) > 5 else ''}")  # fmt: skip


def detect(state: dict, info: dict, where: str) -> Importer:
    """The importer whose ``detect`` scores highest; a tie or no match is refused, naming ``--from``."""
    scores = sorted(((imp.detect(state, info), name) for name, imp in IMPORTERS.items()), reverse=True)
    if not scores or scores[0][0] <= 0:
        top = sorted({k.split(".")[0] for k in state})[:6]
        raise NetFormatError(f"{where}: not a checkpoint of {', '.join(IMPORTERS)} (top-level keys {', '.join(top)}); "
                             f"give --from if it is one")  # fmt: skip
    if len(scores) > 1 and scores[1][0] == scores[0][0]:
        raise NetFormatError(f"{where}: could be {scores[0][1]} or {scores[1][1]}; give --from")
    return IMPORTERS[scores[0][1]]


def import_checkpoint(path: str | os.PathLike, source: str | None = None, **options):
    """The validated :class:`NetSpec` of a GCL, sTML or Nanne checkpoint; ``source`` names the original
    (else detected), ``options`` go to its importer (``arch``, ``pooling``, ``image_size``)."""
    from ..matconvnet.spec import validate
    from .pth import model_state, read_pth

    where = str(path)
    state, info = model_state(read_pth(path), where)
    importer = IMPORTERS[source] if source else detect(state, info, where)
    keys = Keys(state, where)
    spec = importer.build(keys, info, {k: v for k, v in options.items() if v is not None})
    keys.finish()
    spec.meta["checkpoint"] = {"from": importer.name, **info}
    try:
        return validate(spec)
    except NetFormatError as exc:
        raise NetFormatError(f"{where}: {exc}") from None


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A file ``torch.save`` wrote: a zip with ``data.pkl`` (not TorchScript's ``code/``), a pickle (the
    legacy format; any other pickle goes to the same weights-only reader, which refuses it safely), or
    anything else named like a checkpoint (``.pth`` ...) that is not a MAT file."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(6)
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            return True
        if head[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
            return any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names)
    except zipfile.BadZipFile:
        return True  # a damaged zip: the checkpoint reader says so in one line
    except OSError:
        return False
    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES and head != b"MATLAB"
