"""matlab_ref/make_dump.m under GNU Octave (no MatConvNet): its dumps agree with the PyTorch model
to 1e-9 in float64, and on the shared suites' networks it reproduces the dumps of the original
MatConvNet + NetVLAD + deepIBL code. Needs `octave-cli` (CI installs it; see .ci/run)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

from netvlad_port.cli import main
from netvlad_port.fixtures import make_net
from netvlad_port.matconvnet import write_net
from netvlad_port.parity import rel_error

from helpers import SUITES, suite

OCTAVE = shutil.which("octave-cli")
MAKE_DUMP = Path(__file__).parents[1] / "matlab_ref" / "make_dump.m"
pytestmark = pytest.mark.skipif(OCTAVE is None, reason="GNU Octave (octave-cli) is not installed")


def make_dump(net, images, out, precision="double"):
    proc = subprocess.run(
        [OCTAVE, "--no-gui", "--quiet", str(MAKE_DUMP), str(net), str(images), str(out), precision],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.exists(), proc.stdout + proc.stderr
    return out


def parity(*args):
    result = CliRunner().invoke(main, ["parity", *map(str, args)])
    assert "Traceback" not in result.output
    return result


FIXTURES = {
    "vd16_vlad_wpca": {
        "arch": "vd16",
        "method": "vlad_preL2_intra",
        "width": 1 / 16,
        "k": 4,
        "pca_dim": 8,
        "ceil_pool": True,
    },
    "caffe_vladv2": {"arch": "caffe", "method": "vladv2_preL2_intra", "width": 1 / 16, "k": 4, "pca_dim": None},
    "vd16_max": {"arch": "vd16", "method": "preL2_max", "width": 1 / 16, "pca_dim": None},
}


@pytest.fixture(scope="module")
def fixture_dumps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("octave")
    images = tmp / "images.mat"
    rng = np.random.default_rng(4)
    scipy.io.savemat(images, {"images": rng.integers(0, 256, (67, 83, 3, 4)).astype(np.float32)})
    out = {}
    for name, kw in FIXTURES.items():
        net = tmp / f"{name}.mat"
        write_net(make_net(seed=11, **kw), net, version="v7")
        out[name] = (
            net,
            make_dump(net, images, tmp / f"{name}_double.mat"),
            make_dump(net, images, tmp / f"{name}_single.mat", "single"),
        )
    return out


@pytest.mark.parametrize("name", list(FIXTURES))
def test_octave_double_dump_matches_pytorch_to_1e9(fixture_dumps, name):
    net, dump, _ = fixture_dumps[name]
    result = parity(net, dump, "--double", "--rtol", "1e-9", "--atol", "1e-12", "--loss-rtol", "1e-9")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith(" 0 failed")


@pytest.mark.parametrize("name", list(FIXTURES))
def test_octave_single_dump_within_suite_tolerances(fixture_dumps, name):
    net, _, dump = fixture_dumps[name]
    assert parity(net, dump, "--single").exit_code == 0


def test_broken_model_fails_against_octave_dump(fixture_dumps, monkeypatch):
    from netvlad_port import layers

    net, dump, _ = fixture_dumps["vd16_vlad_wpca"]
    monkeypatch.setattr(layers.netvlad, "WHOLE_L2_EPS", 1e-3)
    result = parity(net, dump, "--double", "--rtol", "1e-9", "--atol", "1e-12", "--no-gradients")
    assert result.exit_code == 1 and "first failure: forward at 'postL2'" in result.output


def test_octave_says_why_it_cannot_read_classdef_files(tmp_path):
    net = tmp_path / "objects.mat"
    write_net(make_net("vd16", "preL2_max", width=1 / 16, pca_dim=None), net, encoding="saveobj")
    proc = subprocess.run(
        [OCTAVE, "--no-gui", "--quiet", str(MAKE_DUMP), str(net), str(net), str(tmp_path / "d.mat")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Octave cannot read MATLAB classdef objects" in proc.stderr and not (tmp_path / "d.mat").exists()


def _cells(v):
    return list(np.asarray(v, dtype=object).ravel(order="F"))


@pytest.mark.parametrize("name", SUITES)
def test_octave_ops_reproduce_the_original_code(tmp_path, name):
    """Our .m operations, run in single precision on a suite's network, give the suite's dump
    (MatConvNet MEX + NetVLAD + deepIBL) within the parity README's tolerances."""
    s = suite(name)
    ours = scipy.io.loadmat(make_dump(s.net_path, s.dir / "images.mat", tmp_path / "d.mat", "single"))
    ref = s.ref
    names = ["input"] + s.layer_names
    for i, (a, r) in enumerate(zip(_cells(ours["acts"]), _cells(ref["acts"]))):
        assert rel_error(a, r) <= (1e-4 if names[i] in ("vlad:core", "vlad:intranorm", "postL2") else 1e-5), names[i]
    assert np.abs(ours["desc_test"] - ref["desc_test"]).max() <= 1e-5
    for v in ref["sare_all"].dtype.names:
        o, r = ours["sare_all"][0, 0][v][0, 0], ref["sare_all"][0, 0][v][0, 0]
        assert rel_error(o["loss"], r["loss"]) <= 1e-5 and rel_error(o["dzdy"], r["dzdy"]) <= 1e-5, v
    for i, (a, r) in enumerate(zip(_cells(ours["dzdx"]), _cells(ref["dzdx"]))):
        if np.size(r):
            assert rel_error(np.asarray(a).reshape(np.shape(r)), r) <= 1e-4, f"dzdx {names[min(i, len(names) - 1)]}"
    for i, (a, r) in enumerate(zip(_cells(ours["dzdw"]), _cells(ref["dzdw"]))):
        for j, (wa, wr) in enumerate(zip(_cells(a), _cells(r))):
            assert rel_error(np.asarray(wa).reshape(np.shape(wr)), wr) <= 1e-4, f"dzdw {s.layer_names[i]}{{{j + 1}}}"
