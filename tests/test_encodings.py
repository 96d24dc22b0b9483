"""One reader, three encodings (struct v7, v7.3/HDF5, classdef objects), into the same description."""

import numpy as np
import pytest
import scipy.io
import torch

import netvlad_port
from netvlad_port.matconvnet import read_net, write_net
from netvlad_port.matconvnet.read import to_python

from helpers import DATA, assert_same_net, suite

ENCODINGS = [(v, e) for v in ("v7", "v7.3") for e in ("struct", "classdef", "saveobj")]


@pytest.mark.parametrize("version,encoding", ENCODINGS)
def test_fixture_roundtrip_every_encoding(tmp_path, small_spec, small_images, version, encoding):
    path = tmp_path / "net.mat"
    write_net(small_spec, path, version=version, encoding=encoding)
    back = read_net(path)
    assert_same_net(small_spec, back)
    from netvlad_port.model import SimpleNN

    with torch.no_grad():
        assert torch.equal(SimpleNN(small_spec)(small_images), netvlad_port.load(path)(small_images))


@pytest.mark.parametrize("version,encoding", ENCODINGS)
@pytest.mark.parametrize("name", ["tiny_vladv2", "vgg_small_ceilpool", "tiny_max"])
def test_parity_nets_in_every_encoding(tmp_path, name, version, encoding):
    s = suite(name)
    spec = read_net(s.net_path)
    path = tmp_path / "net.mat"
    write_net(spec, path, version=version, encoding=encoding)
    assert_same_net(spec, read_net(path))
    with torch.no_grad():
        assert torch.equal(netvlad_port.load(s.net_path)(s.images), netvlad_port.load(path)(s.images))


def test_reads_hloc_style_squeezed_struct_file(tmp_path):
    """A struct file whose arrays were squeezed (DxK VLAD weights, vector biases, 3-vector mean)."""
    s = suite("vgg_small")
    raw = scipy.io.loadmat(s.net_path, squeeze_me=True, struct_as_record=False)["net"]
    layers = np.empty((1, len(raw.layers)), dtype=object)
    for i, l in enumerate(raw.layers):
        layers[0, i] = {k: getattr(l, k) for k in l._fieldnames}
    net = {
        "layers": layers,
        "meta": {
            "normalization": {"averageImage": raw.meta.normalization.averageImage[0, 0]},
            "netID": raw.meta.netID,
            "sessionID": raw.meta.sessionID,
        },
    }
    path = tmp_path / "squeezed.mat"
    scipy.io.savemat(path, {"net": net})
    assert read_net(path).layers[30].weights[0].shape == (1, 1, 32, 8)
    with torch.no_grad():
        assert torch.equal(netvlad_port.load(s.net_path)(s.images), netvlad_port.load(path)(s.images))


def test_reads_matconvnet_model_file_saved_with_struct_flag(tmp_path):
    """imagenet-vgg-verydeep-16.mat style: 'layers' and 'meta' are top-level variables."""
    s = suite("tiny_max")
    raw = scipy.io.loadmat(s.net_path)["net"][0, 0]
    path = tmp_path / "imagenet-like.mat"
    scipy.io.savemat(path, {"layers": raw["layers"], "meta": raw["meta"]})
    with torch.no_grad():
        assert torch.equal(netvlad_port.load(s.net_path)(s.images), netvlad_port.load(path)(s.images))


@pytest.mark.parametrize("fname", ["test_user_defined_v7.mat", "test_user_defined_v73.mat"])
def test_classdef_objects_written_by_matlab(fname):
    """Files MATLAB itself wrote (mat-io's test data): user classdef objects decode to their properties."""
    from matio import load_from_mat

    data = {k: to_python(v) for k, v in load_from_mat(str(DATA / "matio" / fname)).items()}
    assert data["obj_with_vals"]["__class__"] == "TestClasses.BasicClass"
    assert np.asarray(data["obj_with_vals"]["a"]).item() == 10.0
    assert data["obj_with_default_val"]["a"] == "Default String"
    nested = data["obj_with_nested_props"]
    assert np.asarray(nested["a"]["a"]).item() == 1.0 and nested["a"]["b"] == "Obj1"
    assert nested["b"][0]["b"] == "Obj1" and nested["c"]["InnerProp"]["b"] == "Obj2"
    assert [np.asarray(o["a"]).item() for o in data["obj_array"]] == [1.0, 3.0, 2.0, 4.0]  # column-major
