"""GCL (docs/gcl.md): the loss against hand-computed values and finite differences, its use in
training through the registry, and mAP@K as mapillary_sls computes it."""

import numpy as np
import pytest
import torch

from netvlad_port.losses import LOSSES
from netvlad_port.plugins.gcl.loss import gcl_loss
from netvlad_port.plugins.gcl.protocol import average_precision_at_k, map_at_k


def test_gcl_loss_hand_computed():
    d = torch.tensor([0.2, 0.7, 0.3, 0.1], dtype=torch.float64)
    psi = torch.tensor([1.0, 0.0, 0.25, 0.0], dtype=torch.float64)
    expected = [0.5 * 0.2**2, 0.0, 0.25 * 0.5 * 0.09 + 0.75 * 0.5 * 0.2**2, 0.5 * 0.4**2]
    assert torch.allclose(gcl_loss(d, psi), torch.tensor(expected, dtype=torch.float64), atol=1e-15)
    assert gcl_loss(d, psi, margin=2.0)[1] == pytest.approx(0.5 * 1.3**2)  # the margin is honoured


def test_gcl_gradients_by_finite_differences():
    torch.manual_seed(0)
    q, p, negs = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((8,), (8,), (3, 8)))
    labels = [0.9, 0.3, 0.0, 0.6]
    for entry in (LOSSES["gcl"], LOSSES["contrastive"]):
        assert torch.autograd.gradcheck(lambda a, b, c, e=entry: e(a, b, c, labels=labels).loss, (q, p, negs))
    d = torch.rand(5, dtype=torch.float64, requires_grad=True)
    psi = torch.rand(5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: gcl_loss(x, psi).sum(), (d,))


def test_gcl_pairs_and_the_binary_baseline():
    q = torch.zeros(4, dtype=torch.float64)
    p = torch.tensor([0.1, 0, 0, 0], dtype=torch.float64)
    negs = torch.tensor([[0.3, 0, 0, 0], [0.9, 0, 0, 0]], dtype=torch.float64)
    out = LOSSES["gcl"](q, p, negs, labels=[1.0, 0.4, 0.0])
    others = np.stack([p.numpy(), *negs.numpy()])
    d = np.linalg.norm(q.numpy()[None] - others + 1e-6, axis=1)  # torch's PairwiseDistance adds eps to a - b
    psi = np.array([1.0, 0.4, 0.0])
    expected = psi * 0.5 * d**2 + (1 - psi) * 0.5 * np.maximum(0.5 - d, 0) ** 2
    assert out.n_pairs == 3 and out.loss.item() == pytest.approx(expected.sum(), rel=1e-12)
    binary = LOSSES["contrastive"](q, p, negs, labels=[1.0, 0.0, 0.0])  # the dataset's binary labels
    expected_b = np.array([1, 0, 0]) * 0.5 * d**2 + (1 - np.array([1, 0, 0])) * 0.5 * np.maximum(0.5 - d, 0) ** 2
    assert binary.loss.item() == pytest.approx(expected_b.sum(), rel=1e-12)
    with pytest.raises(ValueError, match="graded similarity"):
        LOSSES["gcl"](q, p, negs)


def test_map_at_k_hand_computed_and_brute_force():
    ranked = [["DB0", "DB1", "DB2", "DB3", "DB4", "DB5"], ["DB0", "DB5", "DB4", "DB1", "DB3", "DB2"]]
    positives = [["DB4", "DB5"], ["DB0", "DB1"]]  # mapillary_sls's own example
    assert average_precision_at_k(ranked[0], positives[0], 5) == pytest.approx((1 / 5) / 2)
    assert average_precision_at_k(ranked[1], positives[1], 5) == pytest.approx((1 + 2 / 4) / 2)
    assert map_at_k(ranked, positives, 5) == pytest.approx((0.1 + 0.75) / 2)
    rng = np.random.default_rng(0)
    for _ in range(200):  # against a direct count: precision at each relevant rank, over min(#pos, k)
        n, k = int(rng.integers(2, 30)), int(rng.integers(1, 25))
        rank = rng.permutation(n)
        pos = rng.choice(n, size=int(rng.integers(1, n)), replace=False)
        rel = np.isin(rank[:k], pos)
        precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        assert average_precision_at_k(rank, pos, k) == pytest.approx((precision * rel).sum() / min(len(pos), k))


def test_gcl_trains_through_the_cli(tiny_world, tmp_path):
    import json

    from click.testing import CliRunner

    from netvlad_port.cli import main

    res = CliRunner().invoke(main, ["train", str(tiny_world.net), "--dataset", "synthetic", "--root",
                                    str(tiny_world.data), "--loss", "gcl", "--loss-param", "margin=0.7", "--out",
                                    str(tmp_path), "--epochs", "1", "--pca-dim", "0", "--n-neg-choice", "20",
                                    "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "log.jsonl").open()) if "loss" in r]
    assert len(losses) == 6 and all(np.isfinite(losses)) and all(v >= 0 for v in losses)


@pytest.mark.parametrize("trainable", [True, False])
def test_gem_layer_formula_storage_and_export_refusal(tmp_path, trainable):
    from click.testing import CliRunner

    import netvlad_port
    from netvlad_port.cli import main
    from netvlad_port.converted import save_converted
    from netvlad_port.fixtures import make_net
    from netvlad_port.layers.pooling import gem_layer
    from netvlad_port.model import SimpleNN

    spec = make_net("vd16", "preL2_gem", width=1 / 16, pca_dim=None, seed=4)
    spec.layers[-2] = gem_layer(32, trainable=trainable)
    if not trainable:
        spec.layers[-2].params["p"] = 2.5
    model = SimpleNN(spec).double()
    x = torch.rand(2, 3, 48, 64, dtype=torch.float64) * 255
    acts = model.trace(x)
    p = 3.0 if trainable else 2.5
    expected = acts[-3].clamp_min(1e-6).pow(p).mean(dim=(2, 3)).pow(1 / p)
    assert torch.allclose(acts[-2].flatten(1), expected, rtol=1e-10)
    assert (len(model.layers[-2].weight_params()) == 1) == trainable
    save_converted(spec, tmp_path / "gem")
    back = SimpleNN(netvlad_port.load_spec(tmp_path / "gem")).double()
    assert torch.allclose(back(x), model(x), rtol=1e-6)
    res = CliRunner().invoke(main, ["export-mat", str(tmp_path / "gem"), "-o", str(tmp_path / "g.mat")])
    assert res.exit_code == 1 and "no MATLAB counterpart" in res.output and not (tmp_path / "g.mat").exists()


def test_gem_p_is_trained(tiny_world, tmp_path):
    from netvlad_port.datasets import load_synthetic
    from netvlad_port.fixtures import make_net
    from netvlad_port.train import Trainer, TrainOptions

    spec = make_net("vd16", "preL2_gem", width=1 / 16, pca_dim=None, seed=4)
    opts = TrainOptions(learning_rate=0.5, back_prop_to_layer="conv5_1", n_neg_choice=20, test0=False, n_epoch=1)
    t = Trainer(spec, load_synthetic(tiny_world.data, "train"), None, opts, tmp_path, log=lambda *a: None)
    p0 = t.model.layers[-2].p.item()
    t.run(stop_after=2)
    assert t.model.layers[-2].p.item() != p0


def test_gcl_protocol(tiny_world, tmp_path):
    import json

    from click.testing import CliRunner

    from netvlad_port.cli import main
    from netvlad_port.datasets import load_synthetic
    from netvlad_port.feature_store import read_h5_descriptors
    from netvlad_port.retrieval import test_from_fn

    out = tmp_path / "eval"
    args = ["test", str(tiny_world.net), "--dataset", "synthetic-test", "--root", str(tiny_world.data), "--out",
            str(out), "--protocol", "gcl", "--quiet"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    record = json.loads((out / "results.json").read_text())
    assert record["protocol"] == "gcl" and record["recall_ns"] == [1, 2, 3, 4, 5, 10, 15, 20, 25]
    db = load_synthetic(tiny_world.data, "test")
    f_db, f_q = (read_h5_descriptors(out / f"{k}.h5", n) for k, n in (("db", db.db_image_fns), ("q", db.q_image_fns)))
    res, ranks = test_from_fn(db, f_db, f_q, [5], return_ranks=True)
    with_pos = [i for i in range(db.num_queries) if len(db.pos_q(i))]
    hits = [bool(np.isin(ranks[i][:5], db.pos_q(i)).any()) for i in with_pos]
    assert record["recall_at_n"]["5"] == pytest.approx(np.mean(hits)) and record["num_queries"] == len(with_pos)
    assert record["map_at_n"]["5"] == pytest.approx(map_at_k([ranks[i] for i in with_pos],
                                                             [db.pos_q(i) for i in with_pos], 5))  # fmt: skip


def test_field_of_view_overlap_against_closed_forms_and_reference_values():
    from netvlad_port.plugins.gcl.labels import distance_similarity, fov_overlap

    deg = np.pi / 180
    for delta, expected in ((0, 1.0), (30, 2 / 3), (45, 0.5), (60, 1 / 3), (90, 0.0)):  # same position: 1 - |Δ|/θ
        assert fov_overlap((0, 0), 0.3, (0, 0), 0.3 + delta * deg) == pytest.approx(expected, abs=0.01)
    assert fov_overlap((0, 0), 0.0, (0, 10), 0.0) == pytest.approx(0.667, abs=0.01)  # 10 m ahead
    assert fov_overlap((0, 0), 0.0, (10, 0), 0.0) == pytest.approx(0.759, abs=0.01)  # 10 m sideways
    assert fov_overlap((0, 0), 0.0, (0, 101), 0.0) == 0.0
    reference = {0: 1, 5: 0.858, 10: 0.724, 15: 0.597, 20: 0.478, 25: 0.369, 30: 0.270, 40: 0.110, 50: 0.019}
    got = distance_similarity(list(reference))
    assert np.allclose(got, list(reference.values()), atol=0.01)
    assert distance_similarity([70.8, 200]).tolist() == [0.0, 0.0] and np.all(np.diff(distance_similarity(
        np.arange(0, 80, 5))) <= 1e-9)  # fmt: skip


def test_dataset_similarity_graded_and_binary():
    from netvlad_port.datasets import DbBase
    from netvlad_port.plugins.gcl.labels import distance_similarity

    from helpers import line, spec_fields

    db = DbBase("t", ".", ".", spec_fields(line(0, 10, 24, 40), line(0)))
    assert db.similarity(0, [0, 1, 2, 3], "binary").tolist() == [1, 1, 1, 0]
    assert np.allclose(db.similarity(0, [0, 1, 2, 3], "graded"), distance_similarity([0, 10, 24, 40]), atol=1e-6)


def test_pair_sampler_fractions_hold_over_10000_draws():
    from netvlad_port.datasets import DbBase
    from netvlad_port.matlab_random import MatlabRandom
    from netvlad_port.plugins.gcl.sampler import sample_pair

    from helpers import line, spec_fields

    db = DbBase("t", ".", ".", spec_fields(line(*np.arange(0, 400, 4.0)), line(100)))
    rng = MatlabRandom(7)
    psi = np.array([sample_pair(db, 0, rng).labels[0] for _ in range(10_000)])
    n = len(psi)
    for frac, got in ((0.5, np.mean(psi >= 0.5)), (0.25, np.mean((psi > 0) & (psi < 0.5))), (0.25, np.mean(psi == 0))):
        assert abs(got - frac) < 4 * np.sqrt(frac * (1 - frac) / n)  # binomial noise, 4 sigma
    binary = np.array([sample_pair(db, 0, rng, "binary").labels[0] for _ in range(4000)])
    assert set(binary.tolist()) == {0.0, 1.0} and abs(binary.mean() - 0.5) < 4 * np.sqrt(0.25 / 4000)
    near = DbBase("n", ".", ".", spec_fields(line(0, 2), line(1)))  # no psi = 0 and no 0 < psi < 0.5 partner
    drops = sum(sample_pair(near, 0, MatlabRandom(s)) is None for s in range(200))
    assert 60 < drops < 140  # the empty buckets (half the draws) drop the query, no redraw


@pytest.mark.parametrize("seed", range(4))
def test_field_of_view_overlap_equals_a_brute_force_count(seed):
    """Crafted pairs of views against a count of 0.25 m cells of the plane inside both sectors."""
    from netvlad_port.plugins.gcl.labels import FOV, RADIUS, fov_overlap

    rng = np.random.default_rng(seed)
    ca = rng.uniform(-20, 20, 2)
    cb = ca + rng.uniform(-30, 30, 2)
    ha = rng.uniform(0, 2 * np.pi)
    hb = ha + rng.normal(0, 0.3 + 0.5 * seed)
    x, y = np.meshgrid(*(np.arange(-100, 100, 0.25) + 0.125,) * 2)

    def inside(c, h):
        dx, dy = x - c[0], y - c[1]
        angle = np.abs((np.arctan2(dx, dy) - h + np.pi) % (2 * np.pi) - np.pi)
        return (dx**2 + dy**2 <= RADIUS**2) & (angle <= FOV / 2)

    a = inside(ca, ha)
    brute = (a & inside(cb, hb)).sum() / a.sum()
    assert fov_overlap(ca, ha, cb, hb) == pytest.approx(brute, abs=0.005) and brute > 0.05
