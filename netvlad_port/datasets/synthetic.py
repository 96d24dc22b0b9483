"""A small, genuine place-recognition problem that ships with the package (no download).

Each split is its own set of streets (geographically disjoint, like Pittsburgh's splits): a street
is a row of procedurally drawn buildings (facade colours, window grids, doors, signs) under a sky.
Database images are rendered every ``spacing`` metres along the street; queries at random
positions, with viewpoint (lateral shift), scale (distance to the facade), illumination (gain,
gamma, colour cast) and noise changes, so that descriptor quality matters. Positions are UTM
metres. The output is the official layout: ``images/`` (database), ``queries/`` and one
``dbStruct`` spec per split (``synthetic_<split>.mat``, fields in MATLAB's order). Other layouts of the
same views are registered in :data:`LAYOUTS` (plug-ins add theirs, e.g. the GCL wing's ``msls``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..registry import Registry
from .db_base import DbBase, load_db_struct, write_db_struct
from .registry import register_dataset

PX_PER_M = 8  # facade texture resolution
FACADE_H_M = 20  # facade texture height in metres
FOV_M = 20.0  # facade width a camera sees at scale 1
ORIGIN = (584000.0, 4477000.0)  # UTM east / north of the first street (Pittsburgh-like values)
SPLITS = ("train", "val", "test")


@dataclass
class SyntheticConfig:
    db_per_split: int = 120
    queries_per_split: int = 60
    image_hw: tuple[int, int] = (120, 160)
    spacing: float = 5.0  # metres between database images
    streets_per_split: int = 2
    pos_dist_thr: float = 25.0
    non_triv_pos_dist_sq_thr: float = 100.0
    seed: int = 0
    masks: bool = False  # park cars along the street and write each image's exact train-id map


# Cityscapes train-ids of the synthetic world (make-synthetic --masks; guidance.CATEGORIES)
ROAD, BUILDING, SKY, CAR = 0, 2, 10, 13


def _facade(rng: np.random.Generator, length_m: float, labels: np.ndarray | None = None) -> np.ndarray:
    """H x W x 3 float texture of a street: buildings of 8-25 m, windows, doors, signs, sky."""
    h, w = FACADE_H_M * PX_PER_M, int(length_m * PX_PER_M) + 1
    tex = np.empty((h, w, 3), np.float32)
    sky = np.linspace(210, 150, h)[:, None, None] * np.array([0.75, 0.85, 1.0])[None, None]
    tex[:] = sky
    x = 0
    while x < w:
        bw = int(rng.uniform(8, 25) * PX_PER_M)
        bh = int(rng.uniform(0.45, 0.95) * h)
        top = h - bh
        base = rng.uniform(40, 220, 3)
        tex[top:, x : x + bw] = base
        if labels is not None:
            labels[top:, x : x + bw] = BUILDING
        rows, cols = rng.integers(2, 7), rng.integers(2, 6)
        win = rng.uniform(0, 255, 3) if rng.random() < 0.5 else base * rng.uniform(0.2, 0.5)
        ww, wh = max(2, bw // (2 * cols + 1)), max(2, bh // (2 * rows + 2))
        for r in range(rows):
            for c in range(cols):
                y0, x0 = top + (2 * r + 1) * wh, x + (2 * c + 1) * ww
                tex[y0 : y0 + wh, x0 : x0 + ww] = win
        door = x + int(rng.uniform(0.2, 0.7) * bw)
        tex[h - 3 * PX_PER_M :, door : door + 2 * PX_PER_M] = base * 0.3
        if rng.random() < 0.6:  # a sign with its own colour and stripes
            sy, sx = top + int(rng.uniform(0.05, 0.3) * bh), x + int(rng.uniform(0, 0.5) * bw)
            sign = rng.uniform(0, 255, 3)
            tex[sy : sy + PX_PER_M, sx : sx + 4 * PX_PER_M] = sign
            tex[sy : sy + PX_PER_M, sx : sx + 4 * PX_PER_M : 4] = 255 - sign
        x += bw + int(rng.uniform(0, 3) * PX_PER_M)
    tex[h - PX_PER_M // 2 :] = 90  # pavement
    if labels is not None:
        labels[h - PX_PER_M // 2 :] = ROAD
    return tex


def _park_cars(tex: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> None:
    """Cars (4 x 1.6 m, a darker window band, black wheels) every 8-20 m on the pavement."""
    h, w = labels.shape
    base = h - PX_PER_M // 2
    x = int(rng.uniform(2, 10) * PX_PER_M)
    while x + 4 * PX_PER_M < w:
        top, right = base - int(1.6 * PX_PER_M), x + 4 * PX_PER_M
        colour = rng.uniform(20, 235, 3)
        tex[top:base, x:right] = colour
        tex[top : top + PX_PER_M // 2, x + PX_PER_M // 2 : right - PX_PER_M // 2] = colour * 0.35
        for wx in (x + PX_PER_M // 2, right - PX_PER_M - PX_PER_M // 2):
            tex[base - PX_PER_M // 2 : base, wx : wx + PX_PER_M] = 15
        labels[top:base, x:right] = CAR
        x = right + int(rng.uniform(8, 20) * PX_PER_M)


def _render(tex: np.ndarray, s_m: float, rng: np.random.Generator, hw: tuple[int, int], query: bool,
            labels: np.ndarray | None = None):  # fmt: skip
    """The view of the facade centred at ``s_m`` metres, with viewpoint/scale/light changes; and the
    same view of ``labels`` (nearest neighbour: exact train-ids), or None."""
    from PIL import Image

    out_h, out_w = hw
    scale = rng.uniform(0.8, 1.25) if query else rng.uniform(0.95, 1.05)
    shift = rng.normal(0, 1.5 if query else 0.3)
    cw = FOV_M * PX_PER_M * scale
    ch = min(cw * out_h / out_w, tex.shape[0])
    cx = (s_m + shift) * PX_PER_M
    x0 = float(np.clip(cx - cw / 2, 0, tex.shape[1] - cw))
    y0 = float(tex.shape[0] - ch - rng.uniform(0, 0.1 * ch))
    y0 = max(0.0, y0)
    im = Image.fromarray(np.clip(tex, 0, 255).astype(np.uint8))
    extent = (x0, y0, x0 + cw, y0 + ch)
    im = im.transform((out_w, out_h), Image.Transform.EXTENT, extent, Image.Resampling.BILINEAR)
    lab = None
    if labels is not None:
        lab = np.asarray(Image.fromarray(labels).transform((out_w, out_h), Image.Transform.EXTENT, extent,
                                                           Image.Resampling.NEAREST))  # fmt: skip
    a = np.asarray(im, np.float32) / 255
    if query:  # illumination: gain, gamma, colour cast; sensor noise
        a = a ** rng.uniform(0.7, 1.5) * rng.uniform(0.6, 1.2) * rng.uniform(0.85, 1.15, 3)
        a = a + rng.normal(0, 0.03, a.shape)
    else:
        a = a * rng.uniform(0.9, 1.1)
    return np.clip(a * 255, 0, 255).astype(np.uint8), lab


def _split_views(cfg: SyntheticConfig, rng: np.random.Generator, si: int, split: str):
    """The views of one split: (db, queries), each a list of (street, index, UTM east/north, image,
    train-id map or None)."""
    streets = cfg.streets_per_split
    per_street = int(np.ceil(cfg.db_per_split / streets))
    length = per_street * cfg.spacing + FOV_M
    db, queries = [], []
    for st in range(streets):
        labels = np.full((FACADE_H_M * PX_PER_M, int(length * PX_PER_M) + 1), SKY, np.uint8) if cfg.masks else None
        tex = _facade(rng, length, labels)
        if cfg.masks:  # their own generator: the scenes of a dataset without masks stay as they were
            _park_cars(tex, labels, np.random.default_rng([cfg.seed, si, st]))
        north = ORIGIN[1] + 1000.0 * (si * streets + st)  # streets 1 km apart
        n_db = min(per_street, cfg.db_per_split - len(db))
        for i in range(n_db):
            s = FOV_M / 2 + i * cfg.spacing
            db.append((st, i, (ORIGIN[0] + s, north), *_render(tex, s, rng, cfg.image_hw, False, labels)))
        n_q = cfg.queries_per_split // streets + (st < cfg.queries_per_split % streets)
        for i in range(n_q):
            s = rng.uniform(FOV_M / 2, FOV_M / 2 + (n_db - 1) * cfg.spacing)
            image, lab = _render(tex, s, rng, cfg.image_hw, True, labels)
            queries.append((st, i, (ORIGIN[0] + s, north + rng.normal(0, 0.5)), image, lab))
    return db, queries


def make_synthetic(
    out: str | os.PathLike, config: SyntheticConfig | None = None, version: str = "v7", layout: str = "dbstruct"
) -> Path:
    """Write the synthetic dataset to ``out`` in the layout ``layout`` (a name of :data:`LAYOUTS`;
    ``dbstruct``: ``images/``, ``queries/`` and ``synthetic_<split>.mat``). ``config.masks``: cars along
    the street, and ``masks/<image path>.png`` with each view's exact Cityscapes train-ids (road 0,
    building 2, sky 10, car 13), for ``--guidance ids:ROOT/masks``."""
    write = LAYOUTS[layout].write
    cfg = config or SyntheticConfig()
    out = Path(out)
    rng = np.random.default_rng(cfg.seed)
    for si, split in enumerate(SPLITS):
        db, queries = _split_views(cfg, rng, si, split)  # every layout draws every split: the same scenes
        write(out, split, si, db, queries, cfg, version)
    return out


@dataclass(frozen=True)
class Layout:
    """``write(out, split, split_index, db, queries, config, version)`` writes one split's views (each a
    (street, index, (east, north), image, train-id map or None)); ``about`` is its one-line help."""

    name: str
    write: Callable[..., None]
    about: str = ""


LAYOUTS: Registry[Layout] = Registry("synthetic layout", builtins="netvlad_port.datasets.synthetic", key=str.lower)


def register_layout(name: str, write: Callable[..., None], about: str = "", replace: bool = False) -> Layout:
    """Make ``write`` the ``make-synthetic --layout`` ``name`` (see :class:`Layout`)."""
    return LAYOUTS.register(name, Layout(name, write, about), replace=replace)


def write_dbstruct(out: Path, split: str, split_index: int, db, queries, cfg: SyntheticConfig, version: str) -> None:
    """The layout ``dbstruct``: ``images/<split>/``, ``queries/<split>/`` and ``synthetic_<split>.mat``."""
    from PIL import Image

    for sub, views, q in (("images", db, ""), ("queries", queries, "q")):
        for st, i, _, image, lab in views:
            save_view(Image, image, out / sub / f"{split}/s{st}/{q}{i:05d}.jpg", lab, out / MASKS)
    write_db_struct(
        out / f"synthetic_{split}.mat",
        {
            "whichSet": split,
            "dbImageFns": [f"{split}/s{v[0]}/{v[1]:05d}.jpg" for v in db],
            "utmDb": np.array([v[2] for v in db]).T,
            "qImageFns": [f"{split}/s{v[0]}/q{v[1]:05d}.jpg" for v in queries],
            "utmQ": np.array([v[2] for v in queries]).T,
            "numImages": len(db),
            "numQueries": len(queries),
            "posDistThr": cfg.pos_dist_thr,
            "posDistSqThr": cfg.pos_dist_thr**2,
            "nonTrivPosDistSqThr": cfg.non_triv_pos_dist_sq_thr,
        },
        version=version,
    )


register_layout("dbstruct", write_dbstruct, "synthetic_<split>.mat + images/, queries/ (train, val, test)")


MASKS = "masks"  # with --masks: masks/<image path relative to the dataset root>.png, Cityscapes train-ids


def save_view(Image, arr: np.ndarray, path: Path, labels: np.ndarray | None = None, masks: Path | None = None) -> None:
    """One view as ``path`` (JPEG), and its train-ids as ``masks/<path relative to the root>.png``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=92)
    if labels is not None:  # the exact train-ids of the view, for --guidance ids:ROOT/masks
        mask = masks / path.relative_to(masks.parent).as_posix()
        mask = mask.with_name(mask.name + ".png")
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(mask)


def load_synthetic(root: str | os.PathLike, which_set: str = "test") -> DbBase:
    """The split of a dataset written by :func:`make_synthetic`, as a ``dbBase``."""
    root = Path(root)
    name = f"synthetic_{which_set}"
    return DbBase(
        name, root / "images", root / "queries", load_db_struct(root / f"{name}.mat"), str(root / f"{name}.mat")
    )


register_dataset(
    "synthetic",
    lambda split, root, spec_dir: load_synthetic(root, split),
    ("train", "val", "test"),
    recipe="deepibl-pitts30k",
)
