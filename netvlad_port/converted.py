"""The converted-model folder: ``model.safetensors`` + ``config.json`` (no pickle).

Weights are stored in MATLAB layout under ``layers.<i>.weights.<j>`` (i, j 0-based) and
``meta.averageImage``, so ``export-mat`` reproduces the original arrays bit for bit.
``config.json`` holds the layer list (type, name, params, weight shapes), the ``addLayers``
method, ``meta`` and the source file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import NetFormatError
from .io_utils import atomic_dir
from .matconvnet.spec import LayerSpec, NetSpec, ensure_validated, infer_method, output_dim, validate
from .version import __version__

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
FORMAT = "netvlad-port/simplenn"
FORMAT_VERSION = 1


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _jsonable(v):
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def config_of(spec: NetSpec, source: dict | None = None) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "netvlad_port_version": __version__,
        "method": infer_method(spec),
        "whitened": any(l.name == "WPCA" for l in spec.layers),
        "output_dim": output_dim(spec),
        "meta": {k: _jsonable(v) for k, v in spec.meta.items() if k != "averageImage"},
        "source": source or {},
        "layers": [
            {
                "name": l.name,
                "type": l.type,
                "params": {k: _jsonable(v) for k, v in l.params.items()},
                "weights": [list(np.shape(x)) for x in l.weights],
                **({"multipliers": l.multipliers} if l.multipliers else {}),
            }
            for l in spec.layers
        ],
    }


def config_json(cfg: dict) -> str:
    """``config.json`` text: one line per layer, so it reads like a layer table."""
    head = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in cfg.items() if k != "layers")
    layers = ",\n".join(f"  {json.dumps(l)}" for l in cfg["layers"])
    return f'{{\n{head},\n "layers": [\n{layers}\n ]\n}}\n'


def save_converted(
    spec: NetSpec, out_dir: str | os.PathLike, source: str | os.PathLike | None = None, force: bool = False
) -> Path:
    """Write ``spec`` to ``out_dir`` atomically (the folder appears only when complete)."""
    from safetensors.numpy import save_file

    spec = ensure_validated(spec)
    src = {"file": Path(source).name, "sha256": sha256_file(source)} if source else {}
    tensors = {
        f"layers.{i}.weights.{j}": np.ascontiguousarray(w, dtype=np.float32)
        for i, l in enumerate(spec.layers)
        for j, w in enumerate(l.weights)
    }
    if spec.meta.get("averageImage") is not None:
        tensors["meta.averageImage"] = np.ascontiguousarray(spec.meta["averageImage"], dtype=np.float32)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, force=force) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(config_json(config_of(spec, src)))
    return out_dir


def _expect(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise NetFormatError(f"{where}: {what}")


def _read_config(path: Path) -> dict:
    """``config.json``, checked key by key (a dataclass-like schema: the keys this reader uses)."""
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise NetFormatError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise NetFormatError(f"{path}: invalid JSON ({exc})") from None
    except RecursionError:
        raise NetFormatError(f"{path}: JSON nested too deeply") from None
    _expect(isinstance(cfg, dict), str(path), "not a JSON object")
    if cfg.get("format") != FORMAT or not isinstance(cfg.get("format_version", 0), int) or \
            cfg.get("format_version", 0) > FORMAT_VERSION:  # fmt: skip
        raise NetFormatError(
            f"{path}: format {cfg.get('format')!r} v{cfg.get('format_version')} is not {FORMAT} v{FORMAT_VERSION} "
            f"or older"
        )
    _expect(isinstance(cfg.get("layers"), list) and cfg["layers"], f"{path}: layers", "missing or not a list")
    _expect(isinstance(cfg.get("meta", {}), dict), f"{path}: meta", "not an object")
    for i, entry in enumerate(cfg["layers"]):
        where = f"{path}: layers[{i}]"
        _expect(isinstance(entry, dict), where, "not an object")
        for key, kind in (("name", str), ("type", str), ("params", dict), ("weights", list)):
            _expect(isinstance(entry.get(key), kind), f"{where}.{key}", f"missing or not a {kind.__name__}")
        for j, shape in enumerate(entry["weights"]):
            _expect(isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape),
                    f"{where}.weights[{j}]", "not a shape (a list of sizes)")  # fmt: skip
        mults = entry.get("multipliers", {})
        _expect(isinstance(mults, dict) and all(isinstance(v, list) for v in mults.values()),
                f"{where}.multipliers", "not an object of lists")  # fmt: skip
    return cfg


def load_converted(folder: str | os.PathLike) -> NetSpec:
    """Read a folder written by :func:`save_converted`."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise NetFormatError(f"{folder}: not a converted model folder ({p.name} is missing)")
    cfg = _read_config(cfg_path)
    try:
        tensors = load_file(str(w_path))
    except Exception as exc:
        raise NetFormatError(f"{w_path}: cannot read safetensors file ({exc})") from None
    layers = []
    for i, entry in enumerate(cfg["layers"]):
        ws = []
        for j, shape in enumerate(entry["weights"]):
            key = f"layers.{i}.weights.{j}"
            if key not in tensors or list(tensors[key].shape) != list(shape):
                raise NetFormatError(
                    f"{w_path}: tensor {key} of layer {i + 1} ('{entry['name']}') is missing or not of shape {shape}"
                )
            ws.append(tensors[key])
        layers.append(
            LayerSpec(entry["type"], entry["name"], ws, dict(entry["params"]), dict(entry.get("multipliers", {})))
        )
    meta = dict(cfg.get("meta", {}))
    if "meta.averageImage" in tensors:
        meta["averageImage"] = tensors["meta.averageImage"]
    try:
        spec = validate(NetSpec(layers, meta))
    except NetFormatError as exc:
        raise NetFormatError(f"{folder}: {exc}") from None
    for i, (entry, layer) in enumerate(zip(cfg["layers"], spec.layers)):  # save_converted writes every field
        missing = sorted(set(layer.params) - set(entry["params"]))
        _expect(not missing, f"{cfg_path}: layers[{i}].params", f"no {', '.join(missing)} (a default would be guessed)")
    return spec
