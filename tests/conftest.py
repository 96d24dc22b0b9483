"""Shared test helpers: the parity suites (tests/data/parity, see its README) and small fixtures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

DATA = Path(__file__).parent / "data"
PARITY = DATA / "parity"
SUITES = ["tiny_vlad", "tiny_vladv2", "tiny_max", "tiny_avg", "vgg_small", "vgg_small_ceilpool"]
FASTPOW_SUITE = "tiny_vlad_cpu_fastpow"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size networks (seconds to a minute each)")


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


@pytest.fixture(scope="session")
def small_spec():
    """VGG16 structure at 1/16 width, K=8, WPCA 256->32: 35 layers like the released model."""
    from netvlad_port.fixtures import make_net

    return make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=8, pca_dim=32, seed=3, average_image="vgg")


@pytest.fixture(scope="session")
def small_images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 48, 64), generator=g).float()
