"""sTML and semantic-guided de-attention (docs/stml.md): the losses against hand-computed vectors and
finite differences, NAN's mining rule, the modules against their formulas, the guidance sources, each
attention baseline trained end to end, and the mask learning the synthetic sky and cars."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from netvlad_port.cli import main
from netvlad_port.losses import LOSSES
from netvlad_port.plugins.stml.losses import stml_loss

Q, P = torch.tensor([0.6, 0.8]), torch.tensor([0.8, 0.6])
NEGS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.5, math.sqrt(0.75)]])


def test_losses_hand_computed():
    """The vectors of docs/stml.md#losses: per negative and over the batch (/ nNeg = 3)."""
    q, p, n = (t.double() for t in (Q, P, NEGS))
    assert stml_loss(q, p, n).tolist() == pytest.approx([0.255960, 0.0, 1.262051], abs=1e-6)
    assert stml_loss(q, p, n, version=2).tolist() == pytest.approx([0.767544, 0.0, 0.999039], abs=1e-6)
    for name, kw, batch in (("stml", {}, 0.506004), ("stml", {"version": 2}, 0.588861),
                            ("triplet-nanne", {}, 0.159747), ("triplet-stml", {}, 0.087671)):  # fmt: skip
        out = LOSSES[name](q, p, n, **kw)
        assert out.n_pairs == 3 and out.loss.item() / 3 == pytest.approx(batch, abs=2e-6)


def test_gradients_hand_computed_and_by_finite_differences():
    q, p, n = (t.double().clone().requires_grad_() for t in (Q, P, NEGS))
    (LOSSES["stml"](q, p, n).loss / 3).backward()
    assert q.grad.tolist() == pytest.approx([-0.600504, 0.356925], abs=1e-6)
    assert p.grad.tolist() == pytest.approx([0.327413, -0.566476], abs=1e-6)
    assert n.grad.flatten().tolist() == pytest.approx([-0.254480, 0.614370, 0, 0, 0.527572, -0.404820], abs=1e-6)
    g = torch.Generator().manual_seed(0)
    q, p = (torch.randn(6, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    n = torch.randn(4, 6, generator=g, dtype=torch.float64).requires_grad_()
    for name, kw in (("stml", {}), ("stml", {"version": 2}), ("triplet-nanne", {}), ("triplet-stml", {})):
        assert torch.autograd.gradcheck(lambda a, b, c: LOSSES[name](a, b, c, **kw).loss, (q, p, n))  # noqa: B023


def test_identical_images_give_a_finite_gradient():
    q = Q.double().requires_grad_()
    LOSSES["stml"](q, q.detach().clone(), NEGS.double()).loss.backward()
    assert torch.isfinite(q.grad).all()  # the original's sqrt at 0 gives NaN


def _block(kind, c=16, **params):
    from netvlad_port.plugins.stml.attention import BLOCKS

    torch.manual_seed(0)
    block = BLOCKS[kind](c, params)
    for m in block.modules():  # non-trivial BN statistics
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return block.eval()


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@pytest.mark.parametrize("version", [1, 2])
def test_deattention_formula(version):
    """Conv 3/5/7 (32/32/20, reflect) -> ReLU -> BN, concat, 1x1 -> ReLU -> BN -> sigmoid on x̂; y = x m
    or x + x m (deattention_model.py:124-199)."""
    block = _block("deattention", version=version)
    x = torch.randn(2, 16, 9, 12)
    x_hat = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    branches = []
    for seq, k in zip((block.mask.g1, block.mask.g2, block.mask.g3), (3, 5, 7)):
        conv, bn = seq[0], seq[2]
        assert conv.weight.shape == (conv.out_channels, 16, k, k) and conv.padding_mode == "reflect"
        z = F.conv2d(F.pad(x_hat, (k // 2,) * 4, mode="reflect"), conv.weight, conv.bias)
        branches.append(_bn(F.relu(z), bn))
    assert [b.shape[1] for b in branches] == [32, 32, 20]
    w, bn = block.mask.w[0], block.mask.w[2]
    m = torch.sigmoid(_bn(F.relu(F.conv2d(torch.cat(branches, 1), w.weight, w.bias)), bn))
    seen = []
    block.mask.register_forward_hook(lambda module, inputs, out: seen.append(out))  # how the guidance reads m
    with torch.no_grad():
        y = block(x)
    assert torch.allclose(seen[0], m, atol=1e-6)
    assert torch.allclose(y, x * m if version == 1 else x + x * m, atol=1e-6)


def test_se_cbam_bam_crn_formulas():
    x = torch.randn(2, 32, 6, 10)
    se = _block("se", 32)
    w1, w2 = se.fc[0].weight, se.fc[2].weight
    assert w1.shape == (2, 32) and se.fc[0].bias is None
    gate = torch.sigmoid(F.relu(x.mean((2, 3)) @ w1.T) @ w2.T)
    with torch.no_grad():
        assert torch.allclose(se(x), x * gate[:, :, None, None], atol=1e-6)
    cbam = _block("cbam", 32)
    with torch.no_grad():
        xc = x * torch.sigmoid(cbam.mlp(x.amax((2, 3))) + cbam.mlp(x.mean((2, 3))))[:, :, None, None]
        conv, bn = cbam.spatial
        s = _bn(
            F.conv2d(torch.cat([xc.amax(1, keepdim=True), xc.mean(1, keepdim=True)], 1), conv.weight, None, padding=3),
            bn,
        )
        assert bn.momentum == 0.01 and conv.bias is None and torch.allclose(cbam(x), xc * torch.sigmoid(s), atol=1e-5)
    bam = _block("bam", 32)
    with torch.no_grad():
        y = bam(x)
        right = x.clone()
        right[..., 6:] += 5  # beyond the left H x H window: the channel gate does not see it (bam.py:25)
        assert torch.allclose(bam.channel(F.avg_pool2d(right, 6, 6).flatten(1)), bam.channel(x[..., :6].mean((2, 3))))
        gate = bam.channel(x[..., :6].mean((2, 3)))[:, :, None, None] * bam.spatial(x)
        assert torch.allclose(y, (1 + torch.sigmoid(gate)) * x, atol=1e-6)
    crn = _block("crn")
    with torch.no_grad():
        x = torch.randn(1, 16, 5, 7)
        x_hat = F.normalize(x, dim=1)
        assert torch.allclose(crn(x), x_hat * crn.mask(x_hat), atol=1e-6)


def test_the_mask_cancels_in_netvlad_as_in_the_original():
    """NetVLAD normalises each local descriptor first, so x m and x (1 + m) aggregate like x (the
    original's placement; docs/stml.md#modules)."""
    from netvlad_port.fixtures import make_net
    from netvlad_port.model import SimpleNN
    from netvlad_port.networks import insert_attention

    spec = make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=None)
    x = torch.rand(2, 3, 80, 96) * 255
    plain = SimpleNN(spec).eval()(x)
    for kind in ("deattention-v1", "deattention-v2", "crn"):
        with torch.no_grad():
            y = SimpleNN(insert_attention(spec, [kind])).eval()(x)
        assert (y - plain).abs().max() < 1e-5
    with torch.no_grad():
        y = SimpleNN(insert_attention(spec, ["deattention-v1", "se"])).eval()(x)
    assert (y - plain).abs().max() > 1e-4  # SE after the mask pools it: the mask reaches the descriptor


def test_placement_storage_and_export_refusal(tmp_path):
    from netvlad_port import load
    from netvlad_port.converted import save_converted
    from netvlad_port.fixtures import make_net
    from netvlad_port.model import SimpleNN
    from netvlad_port.networks import insert_attention

    spec = insert_attention(make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=None),
                            ["deattention-v1", "se"])  # fmt: skip
    names = [layer.name for layer in spec.layers]
    assert names[names.index("conv5_3") + 1 : names.index("vlad:core")] == ["deattention-v1", "se", "preL2"]
    model = SimpleNN(spec)
    model.layers[names.index("se")].block.fc[0].weight.data.mul_(3)
    save_converted(model.to_spec(), tmp_path / "net")
    x = torch.rand(1, 3, 80, 96) * 255
    assert torch.allclose(load(tmp_path / "net")(x), model.eval()(x), atol=1e-6)
    assert "too small for the 7x7 reflect-padded branch" in model.input_error(48, 64)
    res = CliRunner().invoke(main, ["export-mat", str(tmp_path / "net"), "-o", str(tmp_path / "n.mat")])
    assert res.exit_code != 0 and "deattention" in res.output and not (tmp_path / "n.mat").exists()
    with pytest.raises(Exception, match="already has attention"):
        insert_attention(spec, ["se"])


@pytest.fixture(scope="module")
def masked_world(tmp_path_factory):
    from netvlad_port.datasets import make_synthetic
    from netvlad_port.datasets.synthetic import SyntheticConfig
    from netvlad_port.fixtures import make_net
    from netvlad_port.matconvnet import write_net

    root = tmp_path_factory.mktemp("masked")
    make_synthetic(root / "data", SyntheticConfig(db_per_split=40, queries_per_split=24, image_hw=(64, 96), masks=True))
    write_net(make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=None, seed=1), root / "net.mat")
    return root


def test_guidance_sources_give_the_same_targets(masked_world, tmp_path):
    import h5py
    from PIL import Image

    from netvlad_port.plugins.stml.guidance import Guidance, keep_from_ids, resize_target

    data = masked_world / "data"
    image = data / "queries" / "train" / "s0" / "q00001.jpg"
    ids = np.asarray(Image.open(data / "masks" / "queries" / "train" / "s0" / "q00001.jpg.png"))
    keep = keep_from_ids(ids)
    assert {0.0, 1.0} == set(np.unique(keep)) and keep[ids == 13].max() == 0 and keep[ids == 2].min() == 1
    (tmp_path / "masks" / "queries" / "train" / "s0").mkdir(parents=True)
    Image.fromarray((keep * 255).astype(np.uint8)).save(
        tmp_path / "masks" / "queries" / "train" / "s0" / "q00001.jpg.png"
    )
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["queries/train/s0/q00001.jpg"] = keep
    expected = F.interpolate(torch.tensor(keep)[None, None], size=(4, 6), mode="bicubic", align_corners=True)[0, 0]
    assert torch.equal(resize_target(keep, (4, 6)), expected)
    lookup = {13: 18, 10: 10, 2: 2, 0: 0}
    fn = lambda x: torch.tensor(np.vectorize(lookup.get)(ids))[None]  # noqa: E731  (a "segmenter" giving train-ids
    for source in (f"ids:{data / 'masks'}", f"masks:{tmp_path / 'masks'}", f"h5:{tmp_path / 'm.h5'}", fn):
        assert torch.equal(Guidance(source, data).target(image, (4, 6)), expected)
    assert not torch.equal(Guidance(f"ids:{data / 'masks'}", data, ("human",)).target(image, (4, 6)), expected)
    with pytest.raises(Exception, match="unknown Cityscapes categories"):
        Guidance(f"ids:{data / 'masks'}", data, ("cars",))
    with pytest.raises(Exception, match="no guidance mask for"):
        Guidance(f"masks:{tmp_path / 'masks'}", data).keep(data / "images" / "train" / "s0" / "00000.jpg")


@pytest.mark.parametrize("attention", ["crn", "se", "bam", "cbam", "deattention-v2"])
def test_each_attention_baseline_trains(masked_world, tmp_path, attention):
    import json

    data = masked_world / "data"
    res = CliRunner().invoke(main, ["train", str(masked_world / "net.mat"), "--dataset", "synthetic", "--root",
                                    str(data), "--loss", "triplet-stml", "--attention", attention, "--out",
                                    str(tmp_path), "--epochs", "1", "--pca-dim", "0", "--n-neg-choice", "20",
                                    "--lr", "0.01", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "log.jsonl").open()) if "loss" in r]
    assert losses and np.isfinite(losses).all()
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert attention.split("-")[0] in [layer["type"] for layer in config["layers"]]


def test_the_deattention_mask_learns_the_synthetic_masks(masked_world, tmp_path):
    from netvlad_port import load
    from netvlad_port.datasets import load_synthetic
    from netvlad_port.model import SimpleNN
    from netvlad_port.networks import insert_attention
    from netvlad_port.plugins.stml.guidance import Guidance, mask_iou
    from netvlad_port.train import train

    data = masked_world / "data"
    tr, va, te = (load_synthetic(data, s) for s in ("train", "val", "test"))
    guidance = f"ids:{data / 'masks'}"
    final = train(tr, va, masked_world / "net.mat", tmp_path, log=lambda *a: None, loss="stml", n_epoch=3,
                  learning_rate=0.01, back_prop_to_layer="conv5_1", n_neg_choice=20, pca_dim=0,
                  attention=("deattention-v1",), guidance=guidance, guidance_weight=10.0)  # fmt: skip
    from netvlad_port.matconvnet import read_net

    g = Guidance(guidance, data)
    images = [te.db_image(i) for i in range(te.num_images)]
    before = mask_iou(SimpleNN(insert_attention(read_net(masked_world / "net.mat"), ["deattention-v1"])), g, images)
    after = mask_iou(load(final), g, images)
    assert after > before + 0.1, (before, after)


def test_guidance_needs_a_deattention_layer(masked_world, tmp_path):
    masks = f"ids:{masked_world / 'data' / 'masks'}"
    res = CliRunner().invoke(main, ["train", str(masked_world / "net.mat"), "--dataset", "synthetic", "--root",
                                    str(masked_world / "data"), "--loss", "stml", "--guidance", masks,
                                    "--pca-dim", "0", "--out", str(tmp_path), "--quiet"])  # fmt: skip
    assert res.exit_code != 0 and "add --attention deattention-v1" in res.output
    res = CliRunner().invoke(main, ["train", str(masked_world / "net.mat"), "--dataset", "synthetic", "--root",
                                    str(masked_world / "data"), "--loss", "sare-ind", "--mining-margin", "1",
                                    "--out", str(tmp_path), "--quiet"])  # fmt: skip
    assert res.exit_code != 0 and "--mining-margin is for the losses mined by plain distances" in res.output


@pytest.mark.slow
def test_demo_stml_prints_the_comparison(tmp_path):
    res = CliRunner().invoke(main, ["demo", "--recipe", "stml", "--epochs", "2", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert "baseline triplet" in res.output and "de-att + sTML" in res.output and "IoU of the rejected" in res.output


def test_guided_deattention_training_resumes_exactly(masked_world, tmp_path):
    from netvlad_port.datasets import load_synthetic
    from netvlad_port.matconvnet import read_net
    from netvlad_port.networks import insert_attention
    from netvlad_port.train import Trainer, TrainOptions

    data = masked_world / "data"
    tr, va = (load_synthetic(data, s) for s in ("train", "val"))
    spec = insert_attention(read_net(masked_world / "net.mat"), ["deattention-v1", "se"])
    opts = {"loss": "stml", "n_epoch": 2, "learning_rate": 0.01, "back_prop_to_layer": "conv5_1",
            "n_neg_choice": 20, "pca_dim": 0, "attention": ("deattention-v1", "se"),
            "guidance": f"ids:{data / 'masks'}", "save_frequency": 8}  # fmt: skip
    full = Trainer(spec, tr, va, TrainOptions.create(**opts), tmp_path / "full", log=lambda *a: None).run()
    part = Trainer(spec, tr, va, TrainOptions.create(**opts), tmp_path / "part", log=lambda *a: None)
    part.run(stop_after=5)  # a checkpoint every 2 batches
    resumed = Trainer.resume(tmp_path / "part", tr, va, log=lambda *a: None).run()
    assert np.allclose(resumed.history.batch_loss, full.history.batch_loss, rtol=1e-5, atol=1e-8)
    for (k, a), b in zip(resumed.model.state_dict().items(), full.model.state_dict().values()):
        if k.endswith("num_batches_tracked"):  # not kept: unused with BatchNorm's fixed momentum
            continue
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6), k  # BatchNorm statistics included
    frozen = {**opts, "back_prop_to_layer": "vlad:core"}
    with pytest.raises(Exception, match="below backPropToLayer"):
        Trainer(spec, tr, va, TrainOptions.create(**frozen), tmp_path / "frozen", log=lambda *a: None)


def test_maps_too_small_for_the_deattention_are_refused_before_training(tiny_world, tmp_path):
    res = CliRunner().invoke(main, ["train", str(tiny_world.net), "--dataset", "synthetic", "--root",
                                    str(tiny_world.data), "--attention", "deattention-v1", "--loss", "stml",
                                    "--pca-dim", "0", "--out", str(tmp_path), "--quiet"])  # fmt: skip
    assert res.exit_code == 1 and "48x64 image cannot go through the network" in res.output
    assert "3x4 map is too small" in res.output and "Traceback" not in res.output
