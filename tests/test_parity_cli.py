"""``netvlad-port parity``: forward, SARE losses, backward and the SGD step against each dump,
and a broken model fails with the right layer named."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import netvlad_port
from netvlad_port import layers
from netvlad_port.cli import main
from netvlad_port.parity import load_dump, run_parity, to_matlab

from helpers import FASTPOW_SUITE, SUITES, suite


def parity_cli(*args):
    result = CliRunner().invoke(main, ["parity", *map(str, args)])
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize("name", SUITES)
@pytest.mark.parametrize("precision", ["--single", "--double"])
def test_parity_passes_on_every_suite(name, precision):
    s = suite(name)
    result = parity_cli(s.net_path, s.dir / "ref.mat", precision)
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.endswith("0 failed")
    groups = {line.split()[0] for line in result.output.splitlines()[1:-1]}
    assert groups == {"forward", "descriptor", "loss", "dzdy", "dzdx", "dzdw", "sgd"}


def test_parity_cpu_dump_needs_cpu_mode():
    s = suite(FASTPOW_SUITE)
    assert parity_cli(s.net_path, s.dir / "ref.mat", "--normalize", "matconvnet-cpu").exit_code == 0
    result = parity_cli(s.net_path, s.dir / "ref.mat")
    assert result.exit_code == 1 and "first failure: forward at 'preL2'" in result.output


def test_gradients_and_sgd_step_match(tmp_path):
    """dzdw within 1e-4, dzdx{1} within 1e-4, SGD weights within 1e-6 and momentum 1e-4 (relative)."""
    for name in SUITES:
        s = suite(name)
        for dtype in (torch.float32, torch.float64):
            checks = run_parity(netvlad_port.load(s.net_path).to(dtype), load_dump(s.dir / "ref.mat"))
            by = {(c.group, c.name): c for c in checks}
            assert by[("dzdx", "input")].error <= 1e-4
            assert all(c.passed for c in checks), [c for c in checks if not c.passed]
            assert sum(c.group == "sgd" for c in checks) == 2 * sum(c.group == "dzdw" for c in checks) > 0


def test_cluster_major_flatten_is_caught_at_postL2(monkeypatch):
    s = suite("vgg_small")

    def cluster_major(x):  # (N, K, D) row-major, as several PyTorch ports flatten
        return (
            x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
            if x.shape[2] == 1 and x.shape[3] > 1
            else x.permute(0, 1, 3, 2).reshape(x.shape[0], -1)
        )

    monkeypatch.setattr(layers.netvlad, "matlab_flatten", cluster_major)
    result = parity_cli(s.net_path, s.dir / "ref.mat", "--no-gradients")
    assert result.exit_code == 1
    assert "first failure: forward at 'postL2'" in result.output


def test_epsilon_in_the_wrong_place_is_caught_at_preL2(monkeypatch):
    """x / (|x| + eps) instead of x / sqrt(|x|^2 + eps) shows where descriptors have small norms."""
    from netvlad_port.fixtures import make_net
    from netvlad_port.model import SimpleNN

    spec = make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=8, seed=5)
    conv5_3 = spec.layers[28]
    conv5_3.weights = [w * np.float32(1e-7) for w in conv5_3.weights]  # |conv5_3| ~ 1e-6
    model = SimpleNN(spec).double()
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        acts = model.trace(images)
    dump = {
        "images": images.permute(2, 3, 1, 0).numpy(),
        "desc_test": acts[-1].flatten(1).numpy().T,
        "acts": np.array([to_matlab(a) for a in acts] + [None], dtype=object)[:-1],
    }
    assert all(c.passed for c in run_parity(model, dump, rtol=1e-9, atol=1e-12))

    def eps_outside(self, x):
        return x / (torch.sqrt(self.window_sum_sq(x)) + self.param[1])

    monkeypatch.setattr(layers.Normalize, "forward", eps_outside)
    failed = [c for c in run_parity(model, dump, rtol=1e-4) if not c.passed]
    assert failed and failed[0].name == "preL2"


def test_parity_bad_dump(tmp_path):
    bad = tmp_path / "dump.mat"
    bad.write_bytes(b"not a mat file")
    result = parity_cli(suite("tiny_max").net_path, bad)
    assert result.exit_code == 1 and "dump.mat: cannot read the dump" in result.output
