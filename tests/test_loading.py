"""Loading a network (netvlad_port.loading): the package re-exports it without importing torch, and a
load validates the spec once."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_load_is_reexported_and_the_package_import_stays_cheap():
    import netvlad_port
    from netvlad_port import loading

    assert netvlad_port.load is loading.load and netvlad_port.load_spec is loading.load_spec
    code = (
        "import sys, netvlad_port; from click.testing import CliRunner; from netvlad_port.cli import main; "
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture
def counted(monkeypatch):
    """Counts of ``validate`` calls (wherever the name was imported) and of the per-layer checks."""
    import importlib

    from netvlad_port.matconvnet import spec as spec_module

    calls = {"validate": 0, "layers": 0}
    validate, canonicalise = spec_module.validate, spec_module.canonicalise

    def counting_validate(spec):
        calls["validate"] += 1
        return validate(spec)

    def counting_canonicalise(*args, **kwargs):
        calls["layers"] += 1
        return canonicalise(*args, **kwargs)

    names = ("matconvnet", "matconvnet.spec", "matconvnet.read", "converted", "networks", "pca", "fixtures")
    modules = [importlib.import_module(f"netvlad_port.{name}") for name in names]  # all imported before patching
    monkeypatch.setattr(spec_module, "canonicalise", counting_canonicalise)
    for module in modules:
        if getattr(module, "validate", None) is validate:
            monkeypatch.setattr(module, "validate", counting_validate)
    return calls


@pytest.mark.parametrize("converted", [False, True])
def test_a_load_validates_once(counted, converted, tmp_path):
    import netvlad_port
    from netvlad_port.converted import save_converted
    from netvlad_port.model import SimpleNN

    path = ROOT / "tests" / "data" / "parity" / "tiny_vlad" / "net.mat"
    if converted:
        save_converted(netvlad_port.load_spec(path), tmp_path / "net")
        path = tmp_path / "net"
        counted.update(validate=0, layers=0)
    n = len(netvlad_port.load(path).layers)
    assert counted == {"validate": 1, "layers": n}  # read_net or load_converted; SimpleNN trusts its result
    spec = netvlad_port.load_spec(path)
    SimpleNN(spec)
    SimpleNN(spec)
    save_converted(spec, tmp_path / "again")
    assert counted == {"validate": 2, "layers": 2 * n}


def test_validate_returns_a_new_spec_and_leaves_its_argument_alone(counted):
    import dataclasses

    import numpy as np

    from netvlad_port.matconvnet.spec import LayerSpec, NetSpec, ensure_validated, validate
    from netvlad_port.model import SimpleNN

    w = np.ones((3, 3, 3, 2), np.float32)
    raw = NetSpec([LayerSpec("conv", "c", [w, np.zeros((1, 2), np.float32)], {"pad": 1}), LayerSpec("relu", "r")])
    spec = validate(raw)
    assert spec is not raw and spec.validated and not raw.validated
    assert raw.layers[0].params == {"pad": 1} and raw.layers[0].weights[1].shape == (1, 2)  # untouched
    assert spec.layers[0].params["pad"] == (1, 1, 1, 1) and spec.layers[0].weights[1].shape == (2,)
    assert np.shares_memory(spec.layers[0].weights[0], w)  # the arrays are shared (views), not copied
    assert ensure_validated(spec) is spec and validate(spec) is not spec  # validate always checks
    assert not dataclasses.replace(spec, layers=list(spec.layers)).validated
    counted.update(validate=0)
    SimpleNN(spec)
    assert counted["validate"] == 0
    spec.layers[0].params["stride"] = 2  # an edit after validation: checked (and tidied) again
    assert not spec.validated and SimpleNN(spec).layers[0].to_spec().params["stride"] == (2, 2)
    spec.layers.append(LayerSpec("layerWholeL2Normalize", "postL2"))
    assert not spec.validated and counted["validate"] == 1
