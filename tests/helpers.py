"""Shared test helpers: the parity suites (tests/data/parity, see its README), crafted dataset
geometry and network comparison. Fixtures are in conftest.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch

DATA = Path(__file__).parent / "data"
PARITY = DATA / "parity"
SUITES = ["tiny_vlad", "tiny_vladv2", "tiny_max", "tiny_avg", "vgg_small", "vgg_small_ceilpool"]
FASTPOW_SUITE = "tiny_vlad_cpu_fastpow"


class Suite:
    """One reference dump made by the original MATLAB code under Octave."""

    def __init__(self, name: str):
        self.name, self.dir = name, PARITY / name
        self.net_path = self.dir / "net.mat"
        self.ref = scipy.io.loadmat(self.dir / "ref.mat")
        images = scipy.io.loadmat(self.dir / "images.mat")["images"]  # H x W x 3 x N
        self.images = torch.from_numpy(images).permute(3, 2, 0, 1).contiguous()

    def acts(self) -> list[torch.Tensor]:
        """``acts`` as N x C x H x W float64 tensors."""
        return [to_torch_layout(a) for a in self.ref["acts"].ravel()]

    @property
    def layer_names(self) -> list[str]:
        return [str(n[0]) for n in self.ref["layer_names"].ravel()]


def to_torch_layout(a: np.ndarray) -> torch.Tensor:
    a = np.asarray(a, np.float64)
    return torch.from_numpy(a.reshape(a.shape + (1,) * (4 - a.ndim))).permute(3, 2, 0, 1)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref| (the parity README's per-layer measure)."""
    a, ref = a.detach().double(), ref.detach().double()
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


_SUITES: dict[str, Suite] = {}


def suite(name: str) -> Suite:
    if name not in _SUITES:
        _SUITES[name] = Suite(name)
    return _SUITES[name]


# --- crafted dataset geometry (UTM metres) ------------------------------------------------------
E0, N0 = 584000.0, 4477000.0


def spec_fields(utm_db, utm_q, **extra):
    s = {
        "whichSet": "test",
        "dbImageFns": [f"db/{i:03d}.jpg" for i in range(utm_db.shape[1])],
        "utmDb": utm_db,
        "qImageFns": [f"q/{i:03d}.jpg" for i in range(utm_q.shape[1])],
        "utmQ": utm_q,
        "numImages": utm_db.shape[1],
        "numQueries": utm_q.shape[1],
        "posDistThr": 25.0,
        "posDistSqThr": 625.0,
        "nonTrivPosDistSqThr": 100.0,
    }
    s.update(extra)
    return s


def line(*east):
    return np.array([[E0 + e for e in east], [N0] * len(east)])


def assert_same_net(a, b):
    assert [(l.type, l.name) for l in a.layers] == [(l.type, l.name) for l in b.layers]
    for la, lb in zip(a.layers, b.layers):
        assert len(la.weights) == len(lb.weights), la.name
        for wa, wb in zip(la.weights, lb.weights):
            assert wa.shape == wb.shape and wa.dtype == wb.dtype == np.float32, la.name
            assert np.array_equal(wa, wb), la.name
        assert {k: np.asarray(v).tolist() for k, v in la.params.items() if k not in ("K", "D")} == {
            k: np.asarray(v).tolist() for k, v in lb.params.items() if k not in ("K", "D")
        }, la.name
    assert np.array_equal(a.average_rgb, b.average_rgb)
    assert {k: a.meta.get(k) for k in ("netID", "sessionID")} == {k: b.meta.get(k) for k in ("netID", "sessionID")}
