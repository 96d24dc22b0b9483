"""Fixtures shared by the test modules; plain helpers are in helpers.py."""

from __future__ import annotations

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size networks (seconds to a minute each)")


@pytest.fixture(scope="session")
def small_spec():
    """VGG16 structure at 1/16 width, K=8, WPCA 256->32: 35 layers like the released model."""
    from netvlad_port.fixtures import make_net

    return make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=8, pca_dim=32, seed=3, average_image="vgg")


@pytest.fixture(scope="session")
def small_images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 48, 64), generator=g).float()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A small synthetic dataset (train/val/test: 40 db + 24 queries of 48 x 64 each) and an
    off-the-shelf NetVLAD network for it (VGG16 structure at 1/16 width, K=4, no PCA) as a .mat."""
    from types import SimpleNamespace

    from netvlad_port.datasets import make_synthetic
    from netvlad_port.datasets.synthetic import SyntheticConfig
    from netvlad_port.fixtures import make_net
    from netvlad_port.matconvnet import write_net

    root = tmp_path_factory.mktemp("world")
    make_synthetic(root / "data", SyntheticConfig(db_per_split=40, queries_per_split=24, image_hw=(48, 64)))
    spec = make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=None, seed=1)
    write_net(spec, root / "offtheshelf.mat")
    return SimpleNamespace(root=root, data=root / "data", net=root / "offtheshelf.mat", spec=spec)
