"""The full-size VGG16 + NetVLAD(K=64) + WPCA-4096 structure (35 layers) in every encoding:
load, convert, info and export-mat. Marked slow (about 10-25 s per encoding)."""

import shutil

import pytest
import torch
from click.testing import CliRunner

import netvlad_port
from netvlad_port.cli import main
from netvlad_port.matconvnet import write_net

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full():
    from netvlad_port.fixtures import make_net
    from netvlad_port.model import SimpleNN

    spec = make_net("vd16", "vlad_preL2_intra", width=1.0, k=64, pca_dim=4096, seed=7, average_image="vgg")
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        desc = SimpleNN(spec).eval()(x)
    return spec, x, desc


@pytest.mark.parametrize(
    "version,encoding", [(v, e) for v in ("v7", "v7.3") for e in ("struct", "classdef", "saveobj")]
)
def test_full_size_every_encoding(tmp_path, full, version, encoding):
    spec, x, desc = full
    src = tmp_path / "vd16_pitts30k_conv5_3_vlad_preL2_intra_white.mat"
    write_net(spec, src, version=version, encoding=encoding)
    runner = CliRunner()
    info = runner.invoke(main, ["info", str(src)])
    assert info.exit_code == 0 and "output dim 4096" in info.output
    assert " 35  finalL2 " in info.output and "1x1x32768x4096, 4096" in info.output
    conv = tmp_path / "conv"
    assert runner.invoke(main, ["convert", str(src), "-o", str(conv)]).exit_code == 0
    src.unlink()
    back = tmp_path / "back.mat"
    assert (
        runner.invoke(
            main, ["export-mat", str(conv), "-o", str(back), "--mat-version", version, "--encoding", encoding]
        ).exit_code
        == 0
    )
    with torch.no_grad():
        for path in (conv, back):
            model = netvlad_port.load(path)
            assert len(model.layers) == 35 and model.output_dim == 4096
            assert torch.equal(model(x), desc)
    # ~1.1 GB per case: freed at once, so the slow suite's disk peak stays near one model
    shutil.rmtree(conv)
    back.unlink()
