"""loadNet, addLayers, getClusters, addPCA and deepIBL's SGD step
(docs/matlab.md: loadnet, addlayers, getclusters, addpca, sgd-step)."""

import numpy as np
import pytest
import scipy.io
import torch
from click.testing import CliRunner

import netvlad_port
from netvlad_port.cli import main
from netvlad_port.clusters import get_clusters, kmeans
from netvlad_port.fixtures import make_net, write_imagenet_model
from netvlad_port.losses import LOSSES, tuple_loss
from netvlad_port.matconvnet import read_net
from netvlad_port.model import SimpleNN
from netvlad_port.networks import add_layers, load_net, vlad_alpha
from netvlad_port.pca import add_pca, relja_pca
from netvlad_port.train.update import back_prop_to_layer, deepibl_sgd

from helpers import SUITES, suite


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    path = tmp_path_factory.mktemp("imagenet") / "imagenet-vgg-verydeep-16.mat"
    write_imagenet_model(path, "vd16", width=1 / 16, seed=4)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from netvlad_port.datasets.synthetic import SyntheticConfig, load_synthetic, make_synthetic

    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, SyntheticConfig(db_per_split=40, queries_per_split=10, image_hw=(48, 64)))
    return load_synthetic(root, "train")


def test_load_net_crops_and_swaps(imagenet):
    spec = load_net("vd16", "conv5_3", weights=imagenet)
    names = [l.name for l in spec.layers]
    assert len(names) == 29 and names[-1] == "conv5_3"  # no relu5_3, no classifier
    assert names[3:5] == ["pool1", "relu1_2"] and names[22:24] == ["pool4", "relu4_3"]
    assert spec.meta["sessionID"] == "vd16_offtheshelf_conv5_3" and spec.meta["epoch"] == 0
    assert "classes" not in spec.meta
    ref = make_net("vd16", "preL2_max", width=1 / 16, seed=4, pca_dim=None)  # same rng draws, swapped order
    assert [l.name for l in ref.layers[:29]] == names
    for a, b in zip(spec.layers, ref.layers):
        for wa, wb in zip(a.weights, b.weights):
            assert np.array_equal(wa, wb)
    with pytest.raises(netvlad_port.NetFormatError, match=r"layer name 'conv9' matches 0 layers"):
        load_net("vd16", "conv9", weights=imagenet)
    with pytest.raises(netvlad_port.NetFormatError, match=r"unsupported layer type 'dropout'"):
        read_net(imagenet)  # uncropped: the classifier is not a NetVLAD layer


@pytest.mark.parametrize(
    "method,types",
    [
        ("vlad_preL2_intra", ["normalize", "layerVLAD", "normalize", "layerWholeL2Normalize"]),
        ("preL2_intra_vladv2", ["normalize", "layerVLADv2", "normalize", "layerWholeL2Normalize"]),
        ("vlad", ["layerVLAD", "layerWholeL2Normalize"]),
        ("max", ["layerTotalMaxPool", "layerWholeL2Normalize"]),
        ("preL2_avg", ["normalize", "layerTotalAvgPool", "layerWholeL2Normalize"]),
    ],
)
def test_add_layers_methods(imagenet, method, types):
    trunk = load_net("vd16", "conv5_3", weights=imagenet)
    rng = np.random.default_rng(0)
    descs = rng.normal(size=(32, 500)).astype(np.float32)
    descs /= np.linalg.norm(descs, axis=0)
    clusters = kmeans(descs, 4)
    spec = add_layers(trunk, method, clusters=clusters, train_descs=descs, db_name="pitts30k_train")
    assert [l.type for l in spec.layers[29:]] == types
    vlad = "vlad" in method
    assert spec.meta["sessionID"] == "vd16_offtheshelf_conv5_3" + ("_pitts30k_train" if vlad else "") + f"_{method}"
    if method.startswith("vlad_"):
        w1, w2 = spec.layers[30].weights
        chat = clusters / (np.linalg.norm(clusters, axis=0) + 1e-12)
        dots = np.sort(chat.T @ descs, axis=0)[::-1]
        alpha = -np.log(0.01) / np.mean(dots[0] - dots[1])  # addLayers' rule, recomputed
        assert np.allclose(w1[0, 0], alpha * chat, rtol=1e-5) and np.array_equal(w2[0, 0], -clusters)
        assert np.isclose(vlad_alpha(clusters, descs), alpha)
    SimpleNN(spec)(torch.rand(1, 3, 64, 64) * 255)


def test_add_layers_rejects_unknown_tokens(imagenet):
    trunk = load_net("vd16", "conv5_3", weights=imagenet)
    with pytest.raises(netvlad_port.NetVladPortError, match=r"Unsupported options \(method=vlad_preL3\): preL3"):
        add_layers(trunk, "vlad_preL3", clusters=np.zeros((32, 4)), train_descs=np.zeros((32, 4)))


def test_get_clusters_samples_the_first_images_and_caches(imagenet, synthetic, tmp_path, monkeypatch):
    from netvlad_port import clusters as clusters_mod

    trunk = load_net("vd16", "conv5_3", weights=imagenet)
    spec = add_layers(trunk, "preL2_max")  # only to get a preL2 layer: use the same prefix
    pre = type(spec)(spec.layers[:30], spec.meta)
    read = []
    real = clusters_mod.read_image
    monkeypatch.setattr(clusters_mod, "read_image", lambda p, *resize: read.append(p) or real(p, *resize))
    c, d = get_clusters(pre, synthetic, k=8, cache_dir=tmp_path, n_train=300, n_per_image=10, progress=False)
    assert read == [synthetic.db_image(i) for i in range(30)]  # ceil(300/10) = 30 first images, file order
    assert c.shape == (32, 8) and d.shape == (32, 300)
    assert np.allclose(np.linalg.norm(d, axis=0), 1, atol=1e-5)  # preL2 outputs
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "synthetic_train_vd16_conv5_3_preL2_k008_clst.mat",
        "synthetic_train_vd16_conv5_3_preL2_traindescs.mat",
    ]
    assert np.array_equal(scipy.io.loadmat(tmp_path / files[0])["clsts"], c)
    read.clear()
    c2, _ = get_clusters(pre, synthetic, k=8, cache_dir=tmp_path)
    assert read == [] and np.array_equal(c, c2)


def test_kmeans_finds_separated_centres():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(16, 5)) * 10
    x = np.concatenate([centres[:, i : i + 1] + rng.normal(size=(16, 200)) * 0.1 for i in range(5)], 1)
    found = kmeans(x.astype(np.float32), 5)
    d = ((found[:, :, None] - centres[:, None, :]) ** 2).sum(0)
    assert np.sort(d.min(0)).max() < 0.1


@pytest.mark.parametrize("n,d", [(40, 300), (300, 40)])  # dual (D > N, the NetVLAD case) and primal
def test_relja_pca_against_float64_eigendecomposition(n, d):
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(n, 8)) @ rng.normal(size=(8, d)) + 0.01 * rng.normal(size=(n, d))).astype(np.float32)
    x0 = x.astype(np.float64)
    u, lams, mu, utmu = relja_pca(x, 6)
    assert np.allclose(x, x0 - x0.mean(0), atol=1e-4)  # centred in place: no copy was made
    cov = np.cov(x0.T)
    w, v = np.linalg.eigh(cov)
    w, v = w[::-1][:6], v[:, ::-1][:, :6]
    assert np.allclose(lams, w, rtol=1e-4)
    assert np.allclose(np.abs(np.sum(u * v, 0)), 1, atol=1e-4)  # same directions up to sign
    big = np.abs(u).argmax(0)
    assert (u[big, np.arange(6)] > 0).all()  # deterministic signs
    assert np.allclose(utmu, u.T @ mu)


def test_add_pca_whitens(imagenet, synthetic):
    trunk = load_net("vd16", "conv5_3", weights=imagenet)
    spec = add_layers(trunk, "vlad_preL2_intra", db_train=synthetic, k=4, progress=False)
    white = add_pca(spec, synthetic, pca_dim=16, progress=False)
    assert [l.name for l in white.layers[-2:]] == ["WPCA", "finalL2"]
    assert white.meta["sessionID"].endswith("_vlad_preL2_intra_WPCA")
    model = SimpleNN(white)
    feats = []
    with torch.no_grad():
        for i in range(synthetic.num_images):
            from netvlad_port.images import read_image

            acts = model.trace(read_image(synthetic.db_image(i))[None])
            feats.append(acts[-2].flatten().numpy())  # WPCA output, before finalL2
    f = np.array(feats, np.float64)
    assert np.allclose(f.mean(0), 0, atol=1e-4)  # bias -U_w' mu centres the training data
    assert np.allclose(f.var(0, ddof=1), 1, atol=1e-3)  # whitened: unit variance per component


def test_back_prop_to_layer_trains_exactly_conv5_and_vlad():
    s = suite("vgg_small")
    spec = read_net(s.net_path)
    spec.layers = spec.layers[:33]  # training runs before addPCA
    model = SimpleNN(spec)
    params = back_prop_to_layer(model, "conv5_1")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert (
        names
        == [
            "layers.24.weight",
            "layers.24.bias",
            "layers.26.weight",
            "layers.26.bias",
            "layers.28.weight",
            "layers.28.bias",
            "layers.30.assign",
            "layers.30.offsets",
        ]
        and len(params) == 8
    )
    with torch.no_grad():  # the frozen trunk, as the trunk cache computes it
        x = model.run(model.prepare(s.images), 0, 24)
    feats = model.run(x, 24).flatten(1)
    tuple_loss(LOSSES["sare-ind"], feats).backward()
    assert all(p.grad is not None for p in params)
    assert model.layers[21].weight.grad is None  # conv4_3: frozen, no gradient computed
    assert len(back_prop_to_layer(model, 25, fix_layers=["conv5_2"])) == 6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", SUITES)
def test_one_sgd_step_reproduces_deepibl(name, dtype):
    """torch.optim.SGD on sum(L)/#negatives from the suite's weights = deepIBL's update block."""
    s = suite(name)
    model = SimpleNN(read_net(s.net_path)).to(dtype)
    sgd = s.ref["sgd"][0, 0]
    params = back_prop_to_layer(model, 1)
    opt = deepibl_sgd(params, lr=float(sgd["lr"][0, 0]))
    feats = model.run(model.prepare(s.images)).flatten(1)
    n_neg = int(sgd["thisBatchSize"][0, 0])
    (tuple_loss(LOSSES["sare-ind"], feats) / n_neg).backward()  # the batch objective sum(L) / T
    opt.step()
    after_w, after_m = sgd["weights_after"].ravel(), sgd["momentum_after"].ravel()
    checked = 0
    for i, layer in enumerate(model.layers):
        ws = layer.weight_params()
        if not ws:
            continue
        new_w = layer.matlab_arrays(ws)
        new_m = layer.matlab_arrays([-opt.state[p]["momentum_buffer"] for p in ws])  # deepIBL's m = -buffer
        for j in range(len(ws)):
            rw, rm = after_w[i].ravel()[j], after_m[i].ravel()[j]
            ew = np.abs(new_w[j] - rw.reshape(new_w[j].shape)).max() / np.abs(rw).max()
            em = np.abs(new_m[j] - rm.reshape(new_m[j].shape)).max() / np.abs(rm).max()
            assert ew <= 1e-6 and em <= 1e-4, (layer.name, j, ew, em)
            checked += 1
    assert checked >= 6


def test_cluster_and_pca_commands(imagenet, synthetic, tmp_path):
    root = synthetic.db_path.parent
    run = CliRunner().invoke
    res = run(
        main,
        [
            "cluster",
            "--model",
            str(imagenet),
            "--layer",
            "conv5_3",
            "--dataset",
            "synthetic-train",
            "--root",
            str(root),
            "--k",
            "8",
            "--out",
            str(tmp_path / "offtheshelf"),
        ],
    )
    assert res.exit_code == 0, res.output
    res = run(
        main,
        [
            "pca",
            "--model",
            str(tmp_path / "offtheshelf"),
            "--dataset",
            "synthetic-train",
            "--root",
            str(root),
            "--pca-dim",
            "16",
            "--out",
            str(tmp_path / "white"),
        ],
    )
    assert res.exit_code == 0, res.output
    model = netvlad_port.load(tmp_path / "white")
    assert model.output_dim == 16 and len(model.layers) == 35
    res = run(main, ["export-mat", str(tmp_path / "white"), "-o", str(tmp_path / "white.mat")])
    assert res.exit_code == 0
    res = run(
        main,
        [
            "extract",
            "--model",
            str(tmp_path / "white.mat"),
            "--images",
            str(synthetic.q_path),
            "--out",
            str(tmp_path / "q.npy"),
            "--quiet",
        ],
    )
    assert res.exit_code == 0 and np.load(tmp_path / "q.npy").shape[1] == 16
