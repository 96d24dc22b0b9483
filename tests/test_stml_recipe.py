"""STML's recipe as the paper ran it (docs/stml.md#training-and-the-demo): NAN's mining rule against a
brute-force re-implementation of ``pittsburgh.py``, the modules' fixed order, the backbone split at
conv3_1, the start network from torchvision-format weights, the (mask-filtered) re-clustering and the
``nanne`` recipe."""

import math

import numpy as np
import pytest

from netvlad_port.datasets import DbBase
from netvlad_port.errors import NetVladPortError
from netvlad_port.matlab_random import MatlabRandom, NumpyRandom
from netvlad_port.plugins.stml.sampler import mine_nan

from helpers import line, spec_fields


def _original_getitem(utm_db, utm_q, feats_db, feats_q, cache, draw, n_sample, n_neg, margin):
    """``QueryDatasetFromStruct.__getitem__`` (STML pittsburgh.py:391-432) written out with loops: positives
    by radius (<= 10), potential negatives beyond 25, ``np.random.choice`` with replacement (``draw``),
    np.unique with the cache, the 10·nNeg nearest, violators in plain distances, cache = the chosen."""
    dist = [math.dist(utm_q, utm_db[:, i]) for i in range(utm_db.shape[1])]
    pos = [i for i, d in enumerate(dist) if d <= 10]
    pool = [i for i, d in enumerate(dist) if d > 25]
    d_pos = [float(np.linalg.norm(feats_db[i].astype(np.float64) - feats_q)) for i in pos]
    best, d_p = pos[int(np.argmin(d_pos))], min(d_pos)
    sample = sorted(set(cache) | {pool[j] for j in draw(len(pool), n_sample)})
    ranked = sorted(sample, key=lambda i: (float(np.linalg.norm(feats_db[i].astype(np.float64) - feats_q)), i))
    ranked = ranked[: 10 * n_neg]
    viol = [i for i in ranked if np.linalg.norm(feats_db[i].astype(np.float64) - feats_q) < d_p + margin][:n_neg]
    if not viol:
        return None, cache
    return (best, viol), viol


@pytest.mark.parametrize("kind", [MatlabRandom, NumpyRandom])
def test_nan_mining_equals_the_original_rule(kind):
    """Five calls on one query with changing features, one of them skipped (no violator): the tuples and
    the cache after each call equal the brute force's; the positive at 0.5 m (d <= 1) can be chosen."""
    east = [0.5, 7.0, 9.0, *np.arange(40, 200, 4.0)]
    db = DbBase("t", ".", ".", spec_fields(line(*east), line(0)))
    utm_db, utm_q = db.utm_db, db.utm_q[:, 0]
    rng, ref = kind(5), kind(5)

    def draw(n, k):  # np.random.choice(n, k) with the same generator's doubles: ceil(n * u) - 1
        return (np.ceil(n * ref.rand(1, k)).astype(np.int64) - 1).ravel()

    g = np.random.default_rng(0)
    cache, ref_cache = [np.zeros(0, np.int64)], []
    seen_skip = seen_near = False
    for call, margin in enumerate((1.0, 4.0, 1e-9, 1.5, 0.8)):
        feats = g.normal(size=(db.num_images, 6)).astype(np.float32)
        q = g.normal(size=6).astype(np.float32)
        if call == 1:
            feats[0] = q + 0.01  # the 0.5 m image is the nearest positive
        if call == 2:
            feats[1] = q  # d_p = 0 and a margin of 1e-9: nothing violates, the query is skipped
        got = mine_nan(db, 0, q, feats, cache, rng, n_neg_sample=30, n_neg=3, margin=margin)
        want, ref_cache = _original_getitem(utm_db, utm_q, feats, q, ref_cache, draw, 30, 3, margin)
        if want is None:
            assert got is None
            seen_skip = True
        else:
            assert (got.positive, got.negatives.tolist()) == (want[0], want[1])
            seen_near |= want[0] == 0
        assert cache[0].tolist() == list(ref_cache)
    assert seen_skip and seen_near and len(ref_cache) > 0


def test_attention_runs_in_the_original_order():
    """tasks/train.py:54-58 + common.py:31-57: de-attention, then SE, BAM, CBAM, CRN, however listed."""
    from netvlad_port.fixtures import make_net
    from netvlad_port.networks import insert_attention

    spec = make_net("vd16", "vlad_preL2_intra", width=1 / 16, k=4, pca_dim=None)
    for listed, want in ((["se", "deattention-v1"], ["deattention", "se"]),
                         (["crn", "cbam", "bam", "se", "deattention-v2"], ["deattention", "se", "bam", "cbam", "crn"]),
                         (["deattention-v1", "se"], ["deattention", "se"])):  # fmt: skip
        types = [layer.type for layer in insert_attention(spec, listed).layers]
        at = types.index(want[0])
        assert types[at : at + len(want)] == want and types[at + len(want)] == "normalize"


def _narrow_net(width=0.125, k=4):
    """A torchvision VGG16 trunk (conv5_3 cut, 1/8 width, torchvision's initialisation) + Nanne's NetVLAD."""
    import torch

    from netvlad_port.importers import IMAGENET
    from netvlad_port.matconvnet.spec import LayerSpec, NetSpec
    from netvlad_port.model import SimpleNN

    g = torch.Generator().manual_seed(0)
    d = round(512 * width)
    pool = LayerSpec(
        "netvlad", "pool", [torch.randn(k, d, 1, 1, generator=g).numpy(), torch.randn(k, d, generator=g).numpy()]
    )
    backbone = LayerSpec("backbone", "encoder", [], {"arch": "vgg16", "cut": "conv5_3", "width": width})
    return SimpleNN(NetSpec([backbone, pool], {"preprocess": dict(IMAGENET)})).to_spec()


def test_split_backbone_computes_the_same_and_trains_from_conv3_1():
    import torch
    import torchvision

    from netvlad_port.layers.backbones import split_backbone
    from netvlad_port.model import SimpleNN
    from netvlad_port.train.update import back_prop_to_layer, layer_index

    whole = _narrow_net()
    with pytest.raises(NetVladPortError, match="inside the backbone block 'encoder'.*--split-backbone conv3_1"):
        layer_index(SimpleNN(whole), "conv3_1")
    split = split_backbone(whole, "conv3_1")
    assert [(layer.name, layer.params.get("start"), layer.params.get("cut")) for layer in split.layers[:2]] == [
        ("encoder", None, "pool2"), ("conv3_1", "conv3_1", "conv5_3")]  # fmt: skip
    x = torch.rand(2, 3, 64, 96)
    a, b = SimpleNN(whole).eval(), SimpleNN(split).eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    trained = back_prop_to_layer(b, "conv3_1")
    # torchvision's vgg16.features: conv3_1 is item 10, conv5_3 item 28 (9 convs, weight + bias each), + NetVLAD's 2
    convs = [m for m in torchvision.models.vgg16().features[10:29] if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 9 and len(trained) == 2 * 9 + 2
    assert not any(p.requires_grad for p in b.layers[0].parameters())
    want = [(round(m.out_channels / 8), round(m.in_channels / 8)) for m in convs]
    got = [tuple(p.shape[:2]) for p in trained if p.dim() == 4][:9]
    assert got == want


def test_cluster_builds_stml_start_network(tiny_world, tmp_path):
    """cluster --original stml on a torchvision trunk: split at conv3_1, 640x480 resize, Nanne's NetVLAD whose
    alpha and weights follow netvlad.py init_params (brute force on the cached descriptors and centres)."""
    import scipy.io
    from click.testing import CliRunner

    from netvlad_port.cli import main
    from netvlad_port.converted import save_converted
    from netvlad_port.loading import load_spec
    from netvlad_port.matconvnet.spec import NetSpec
    from netvlad_port.model import SimpleNN
    from netvlad_port.networks import insert_attention
    from netvlad_port.train.update import layer_index

    whole = _narrow_net()
    save_converted(NetSpec(whole.layers[:1], whole.meta), tmp_path / "trunk")
    args = [
        "cluster",
        "--model",
        str(tmp_path / "trunk"),
        "--dataset",
        "synthetic-train",
        "--root",
        str(tiny_world.data),
        "--k",
        "4",
        "--original",
        "stml",
        "--cache-dir",
        str(tmp_path / "c"),
        "--out",
        str(tmp_path / "start"),
    ]
    res = CliRunner().invoke(main, [*args, "--quiet"])
    assert res.exit_code == 0, res.output
    spec = load_spec(tmp_path / "start")
    assert [layer.name for layer in spec.layers] == ["encoder", "conv3_1", "pool"] and spec.layers[2].type == "netvlad"
    assert spec.meta["resize"]["size"] == [480, 640]
    files = {p.name.split("_")[-1]: p for p in (tmp_path / "c").iterdir()}
    descs = scipy.io.loadmat(files["traindescs.mat"])["trainDescs"].astype(np.float64)
    clst = scipy.io.loadmat(files["clst.mat"])["clsts"].astype(np.float64)
    assert descs.shape == (64, 40 * 100) and np.allclose(np.linalg.norm(descs, axis=0), 1, atol=1e-5)
    gaps = []
    for n in range(descs.shape[1]):  # the best minus the second-best dot product of each descriptor
        dots = sorted((clst[:, j] / np.linalg.norm(clst[:, j])) @ descs[:, n] for j in range(4))
        gaps.append(dots[-1] - dots[-2])
    alpha = -math.log(0.01) / np.mean(gaps)
    w, c = spec.layers[2].weights
    assert np.allclose(w[:, :, 0, 0], alpha * (clst / np.linalg.norm(clst, axis=0)).T, rtol=1e-5)
    assert np.allclose(c, clst.T)
    model = SimpleNN(insert_attention(spec, ["se", "deattention-v1"]))
    assert layer_index(model, "conv3_1") == 1
    assert [layer.name for layer in model.layers] == ["encoder", "conv3_1", "deattention-v1", "se", "pool"]


def test_reclustering_samples_the_kept_positions(tmp_path):
    """STML's re-clustering (tasks/get_clusters.py:50-88, 124-130) by brute force: per image 2n positions
    drawn, those whose cell's top-left pixel is sky or a car dropped, the first n kept; then the same k-means."""
    import torch

    from netvlad_port.clusters import MASK_SOURCES, get_clusters, kmeans
    from netvlad_port.datasets import make_synthetic, open_dataset
    from netvlad_port.datasets.synthetic import SyntheticConfig
    from netvlad_port.images import read_image
    from netvlad_port.matconvnet.spec import NORMALIZE, LayerSpec, NetSpec
    from netvlad_port.model import SimpleNN

    make_synthetic(
        tmp_path / "data", SyntheticConfig(db_per_split=12, queries_per_split=4, image_hw=(64, 96), masks=True)
    )
    db = open_dataset("synthetic-train", tmp_path / "data")
    trunk = _narrow_net()
    pre = NetSpec(trunk.layers[:1] + [LayerSpec(NORMALIZE, "preL2", [], {"param": [128, 1e-12, 1, 0.5]})], trunk.meta)
    keep = MASK_SOURCES["guidance"](f"ids:{tmp_path / 'data' / 'masks'}", db, ("sky", "vehicle"))  # --keep-masks
    n = 5
    clusters, descs = get_clusters(pre, db, k=4, n_train=12 * n, n_per_image=n, keep=keep, rng="numpy",
                                   progress=False)  # fmt: skip
    rng = np.random.default_rng(43)  # NumpyRandom(43): randsample(n, k) = choice(n, k, replace=False) + 1
    rng.choice(db.num_images, 12, replace=False)  # the image draw getClusters makes and does not use
    model = SimpleNN(pre).eval()
    want, dropped = [], 0
    for i in range(12):
        x = read_image(db.db_image(i))[None]
        with torch.no_grad():
            y = model.run(model.prepare(model.from_rgb255(x)))[0]  # D x h x w (preL2: unit columns)
        _, big_h, big_w = x.shape[1:]
        h, w = y.shape[1:]
        mask = keep(db.db_image(i))
        kept = []
        for r in rng.choice(h * w, 2 * n, replace=False):
            yy, xx = divmod(int(r), w)
            if mask[int(yy * (big_h / h)), int(xx * (big_w / w))] >= 0.5:
                kept.append(r)
            else:
                dropped += 1
        want += [y[:, r // w, r % w].numpy() for r in kept[:n]]
    want = np.stack(want, 1)
    assert dropped > 0 and descs.shape == want.shape and np.allclose(descs, want, atol=1e-6)
    assert np.array_equal(clusters, kmeans(want.astype(np.float32), 4))


def test_nanne_recipe_is_nannes_main_py():
    """Nanne main.py: batchSize 4 (:29), cacheRefreshRate 1000 (:32), nEpochs 30 (:34), SGD lr 0.0001 (:38-39),
    StepLR(5, 0.5) stepped each epoch (:40-41, :511), weightDecay 0.001 (:42), momentum 0.9 (:43), margin
    sqrt(0.1) (:66, :461), conv5_1 up (:395-399); pittsburgh.py:170 nNegSample 1000, nNeg 10."""
    from netvlad_port.losses import LOSSES
    from netvlad_port.train.options import TrainOptions
    from netvlad_port.train.recipes import recipe_options

    opts = TrainOptions.create(**recipe_options("nanne"))
    got = (opts.batch_size, opts.comp_feats_frequency, opts.n_epoch, opts.learning_rate, opts.lr_down_freq,
           1 / opts.lr_down_factor, opts.weight_decay, opts.momentum, opts.back_prop_to_layer, opts.n_neg_choice,
           opts.n_neg_cap)  # fmt: skip
    assert got == (4, 1000, 30, 0.0001, 5, 0.5, 0.001, 0.9, "conv5_1", 1000, 10)
    loss, sampler = opts.objective()
    assert loss is LOSSES["triplet-nanne"] and sampler.name == "violators-l2"
    assert loss.sampler_params["margin"] == pytest.approx(math.sqrt(0.1))
