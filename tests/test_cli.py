"""convert / info / export-mat as the README describes them."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import netvlad_port
from netvlad_port.cli import main
from netvlad_port.matconvnet import read_net, write_net

from helpers import assert_same_net, suite


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("version,encoding", [("v7", "struct"), ("v7.3", "saveobj"), ("v7", "classdef")])
def test_mat_convert_export_read_roundtrip(tmp_path, small_spec, small_images, version, encoding):
    src = tmp_path / "src.mat"
    write_net(small_spec, src, version="v7.3", encoding="saveobj")
    out = tmp_path / "conv"
    assert "35 layers, method vlad_preL2_intra, whitened, output dim 32" in run("convert", src, "-o", out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["source"]["file"] == "src.mat" and len(cfg["source"]["sha256"]) == 64
    assert cfg["meta"]["netID"] == "vd16" and cfg["method"] == "vlad_preL2_intra"
    assert [l["name"] for l in cfg["layers"]][29:] == [
        "preL2",
        "vlad:core",
        "vlad:intranorm",
        "postL2",
        "WPCA",
        "finalL2",
    ]
    back = tmp_path / f"back_{encoding}.mat"
    run("export-mat", out, "-o", back, "--mat-version", version, "--encoding", encoding)
    assert_same_net(read_net(src), read_net(back))
    with torch.no_grad():
        d = [netvlad_port.load(p)(small_images) for p in (src, out, back)]
    assert torch.equal(d[0], d[1]) and torch.equal(d[0], d[2])


def test_info_prints_layer_table(tmp_path):
    out = run("info", suite("vgg_small_ceilpool").net_path, "--image-size", "70x90")
    lines = out.splitlines()
    assert "method vlad_preL2_intra  whitened yes  output dim 32" in out
    assert "averageImage(1,1,:) 123.68 116.779 103.939" in out
    table = [l for l in lines if l[:3].strip().isdigit()]
    assert len(table) == 35
    # ceil pools: 70x90 -> 35x45 -> 18x23 -> 9x12 -> 5x6 (parity README)
    assert "pool4" in table[22] and table[22].endswith("5 x 6 x 32")
    assert "pool3" in table[15] and table[15].endswith("9 x 12 x 16")
    assert table[30].split()[1:3] == ["vlad:core", "layerVLAD"] and table[30].endswith("1 x 8 x 32")
    assert table[32].endswith("1 x 1 x 256")


def test_info_on_converted_folder_matches_mat(tmp_path):
    p = suite("tiny_vladv2").net_path
    run("convert", p, "-o", tmp_path / "c")
    a, b = run("info", p).splitlines()[1:], run("info", tmp_path / "c").splitlines()[1:]
    assert a == b


def test_model_api(small_spec, small_images):
    from netvlad_port.model import SimpleNN

    model = SimpleNN(small_spec)
    assert model.output_dim == 32 and model.method == "vlad_preL2_intra"
    with torch.no_grad():
        acts = model.trace(small_images)
        desc = model(small_images)
    assert len(acts) == 36 and torch.equal(acts[-1].flatten(1), desc)
    assert torch.allclose(desc.norm(dim=1), torch.ones(2))
    spec = model.to_spec()
    for a, b in zip(spec.layers, small_spec.layers):
        for wa, wb in zip(a.weights, b.weights):
            assert np.array_equal(wa, wb)


def test_every_option_has_help_and_commands_come_in_workflow_order():
    from netvlad_port.cli import COMMANDS

    ctx = main.make_context("netvlad-port", [], resilient_parsing=True)
    assert main.list_commands(ctx)[: len(COMMANDS)] == list(COMMANDS)
    missing = []
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        sub = command.make_context(name, [], resilient_parsing=True)
        for param in command.get_params(sub):
            if getattr(param, "param_type_name", "") == "option" and param.name != "help":
                record = param.get_help_record(sub)
                if not record or not record[1].split("[")[0].strip():
                    missing.append(f"{name} {'/'.join(param.opts)}")
    assert not missing
    out = CliRunner().invoke(main, ["--help"]).output
    assert all(line in out for line in COMMANDS.values())
    for name in ("convert", "export-mat", "extract", "test", "search", "cluster", "pca", "train", "demo"):
        opts = {o for p in main.get_command(ctx, name).params for o in p.opts}
        assert {"-o", "--out"} <= opts, name  # one convention for outputs
    assert {"--resize-shorter", "--resize-queries"} <= {o for p in main.get_command(ctx, "test").params for o in p.opts}


def test_the_network_is_given_the_same_way_everywhere(tmp_path):
    s = suite("tiny_max")
    for args in (["info", str(s.net_path)], ["info", "--model", str(s.net_path)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0 and "layerTotalMaxPool" in res.output, res.output
    for command in ("info", "convert", "extract", "test", "cluster", "pca", "export-mat"):
        res = CliRunner().invoke(main, [command, "--help"])
        assert "[MODEL]" in res.output and "--model" in res.output, command
    missing = CliRunner().invoke(main, ["info"])
    assert missing.exit_code == 2 and "no network given" in missing.output
    both = CliRunner().invoke(main, ["parity", "--model", str(s.net_path), str(s.dir / "ref.mat")])
    assert both.exit_code == 0, both.output
