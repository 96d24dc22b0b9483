"""Bad input gets one clear error naming the file, layer or field, and nothing half-written."""

import os

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

import netvlad_port
from netvlad_port import NetFormatError
from netvlad_port.cli import main
from netvlad_port.matconvnet import read_net, write_net

from helpers import suite


def raw_net(name="tiny_vlad"):
    return scipy.io.loadmat(suite(name).net_path)["net"]


def save_raw(tmp_path, net, fname="bad.mat"):
    path = tmp_path / fname
    scipy.io.savemat(path, {"net": net})
    return path


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize("version", ["v7", "v7.3"])
def test_truncated_file(tmp_path, small_spec, version):
    path = tmp_path / "net.mat"
    write_net(small_spec, path, version=version)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NetFormatError, match=r"net\.mat.*(truncated or corrupt|not a readable MAT file)"):
        read_net(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.mat"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(NetFormatError, match=r"garbage\.mat: not a readable MAT file"):
        read_net(path)


def test_missing_file(tmp_path):
    with pytest.raises(NetFormatError, match=r"nope\.mat: no such file"):
        read_net(tmp_path / "nope.mat")


def test_mat_without_net(tmp_path):
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"dbStruct": np.zeros(3), "foo": 1.0})
    with pytest.raises(NetFormatError, match=r"other\.mat: the MAT file has no variable 'net'.*dbStruct, foo"):
        read_net(path)


def test_vlad_layer_without_weights(tmp_path):
    """The 'layerVLAD loaded without the NetVLAD classes' case (netvlad issue #6)."""
    net = raw_net()
    net["layers"][0, 0][0, 7]["weights"][0, 0] = np.zeros((0, 0))
    path = save_raw(tmp_path, net)
    with pytest.raises(NetFormatError, match=r"layer 8 \('vlad:core'\): layerVLAD has no weights.*NetVLAD classes"):
        read_net(path)


def test_empty_classdef_vlad_object(tmp_path):
    from matio import save_to_mat
    from matio.utils.matclass import MatlabOpaque

    net = raw_net()
    net["layers"][0, 0][0, 7] = MatlabOpaque(
        {"name": np.array(["vlad:core"]), "weights": np.zeros((0, 0))}, "layerVLAD"
    )
    path = tmp_path / "emptyobj.mat"
    save_to_mat(str(path), {"net": net}, version="v7")
    with pytest.raises(NetFormatError, match=r"emptyobj\.mat: layer 8 \('vlad:core'\): layerVLAD has no weights"):
        read_net(path)


def test_weights_that_do_not_chain(tmp_path):
    net = raw_net()
    conv2 = net["layers"][0, 0][0, 3]
    conv2["weights"][0, 0][0, 0] = np.zeros((3, 3, 5, 8), np.float32)  # conv1 gives 8 channels
    path = save_raw(tmp_path, net)
    with pytest.raises(
        NetFormatError,
        match=r"layer 4 \('conv2'\): filters expect 5 input channels but the "
        r"previous layer gives 8",
    ):
        read_net(path)


def test_vlad_dimension_mismatch(tmp_path):
    net = raw_net()
    vlad = net["layers"][0, 0][0, 7]
    w = vlad["weights"][0, 0]
    w[0, 0] = np.zeros((1, 1, 12, 4), np.float32)
    w[0, 1] = np.zeros((1, 1, 12, 4), np.float32)
    path = save_raw(tmp_path, net)
    with pytest.raises(NetFormatError, match=r"layer 8 \('vlad:core'\): VLAD expects D = 12 input channels"):
        read_net(path)


def test_unknown_layer_type(tmp_path):
    net = raw_net()
    net["layers"][0, 0][0, 2]["type"][0, 0] = np.array(["softmaxloss"])
    path = save_raw(tmp_path, net)
    with pytest.raises(NetFormatError, match=r"unsupported layer type 'softmaxloss' at layer 3 \('relu1'\)"):
        read_net(path)


def test_bad_normalize_param(tmp_path):
    net = raw_net()
    net["layers"][0, 0][0, 6]["param"][0, 0] = np.array([[32.0, 1e-12]])
    path = save_raw(tmp_path, net)
    with pytest.raises(NetFormatError, match=r"layer 7 \('preL2'\): normalize param must be \[N kappa alpha beta\]"):
        read_net(path)


def test_cli_reports_errors_without_traceback(tmp_path):
    path = tmp_path / "garbage.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + os.urandom(200))
    for args in (["info", path], ["convert", path, "-o", tmp_path / "out"]):
        result = cli(*args)
        assert result.exit_code == 1
        assert result.output.startswith("Error: ") and "garbage.mat" in result.output
    assert not (tmp_path / "out").exists()


def test_output_folder_exists_needs_force(tmp_path):
    out = tmp_path / "conv"
    assert cli("convert", suite("tiny_max").net_path, "-o", out).exit_code == 0
    before = (out / "config.json").read_text()
    result = cli("convert", suite("tiny_vlad").net_path, "-o", out)
    assert result.exit_code == 1 and "output folder exists (use --force" in result.output
    assert (out / "config.json").read_text() == before
    assert cli("convert", suite("tiny_vlad").net_path, "-o", out, "--force").exit_code == 0
    assert netvlad_port.load(out).method == "vlad_preL2_intra"


def test_export_refuses_existing_file(tmp_path):
    out = tmp_path / "m.mat"
    out.write_bytes(b"keep me")
    result = cli("export-mat", suite("tiny_max").net_path, "-o", out)
    assert result.exit_code == 1 and "output file exists" in result.output
    assert out.read_bytes() == b"keep me"


def test_failed_writes_leave_nothing(tmp_path, small_spec, monkeypatch):
    import safetensors.numpy
    import scipy.io as sio

    from netvlad_port.converted import save_converted

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError):
        save_converted(small_spec, tmp_path / "conv")
    monkeypatch.setattr(sio, "savemat", boom)
    with pytest.raises(OSError):
        write_net(small_spec, tmp_path / "net.mat")
    assert list(tmp_path.iterdir()) == []


def test_converted_folder_problems(tmp_path, small_spec):
    from netvlad_port.converted import save_converted

    out = save_converted(small_spec, tmp_path / "conv")
    (out / "model.safetensors").rename(tmp_path / "moved.safetensors")
    with pytest.raises(NetFormatError, match=r"conv: not a converted model folder \(model.safetensors is missing\)"):
        netvlad_port.load(out)
    (tmp_path / "moved.safetensors").rename(out / "model.safetensors")
    (out / "config.json").write_text("{broken")
    with pytest.raises(NetFormatError, match=r"config.json: invalid JSON"):
        netvlad_port.load(out)
