"""MSLS and GCL evaluation as the benchmark defines it (docs/gcl.md#msls-evaluation, #whitening): GCL's
whitening fitted on the evaluation database, database panoramas ranked as misses, subtasks, sequence
tasks and the MSLS-test predictions file; each against hand-worked or brute-force values."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from netvlad_port.cli import main
from netvlad_port.datasets import DatasetError, open_dataset
from netvlad_port.datasets.synthetic import SyntheticConfig, make_synthetic
from netvlad_port.evaluate import pca_fit_of, write_key_predictions
from netvlad_port.plugins.gcl.msls import DbMsls, write_msls_city
from netvlad_port.plugins.gcl.msls_eval import DbMslsEval, DbMslsTest
from netvlad_port.retrieval import test_from_fn


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from types import SimpleNamespace

    from netvlad_port.fixtures import make_net
    from netvlad_port.matconvnet import write_net

    root = tmp_path_factory.mktemp("gcleval")
    make_synthetic(root / "data", SyntheticConfig(db_per_split=40, queries_per_split=20, image_hw=(48, 64)),
                   layout="msls")  # fmt: skip
    spec = make_net("vd16", "max", width=1 / 16, k=4, pca_dim=None, seed=1)  # 32-D, max-pooled conv5_3
    write_net(spec, root / "net.mat")
    return SimpleNamespace(root=root, data=root / "data", net=root / "net.mat", spec=spec)


def _csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [dict(zip(rows[0], r)) for r in rows[1:]]


# -- whitening as GCL fits it (apply_pca.py:41-71) ---------------------------------------------------------


def _gcl_literal(x_rows, dim):
    """apply_pca.py pcawhitenlearn as written (D x N columns, np.linalg.eig, inv of sqrt(diag))."""
    x = x_rows.T
    m = x.mean(axis=1, keepdims=True)
    xc = x - m
    cov = xc @ xc.T
    cov = (cov + cov.T) / (2 * x.shape[1])
    w, e = np.linalg.eig(cov)
    order = w.argsort()[::-1]
    p = np.linalg.inv(np.sqrt(np.diag(w[order]))) @ e[:, order].T
    return m, np.real(p)[:dim]


def _whitenapply(q_rows, m, p):
    y = p @ (q_rows.T - m.reshape(-1, 1))
    return (y / (np.linalg.norm(y, axis=0, keepdims=True) + 1e-6)).T


def _same_up_to_sign(a, b, atol):
    sign = np.sign((a * b).sum(0))  # eigenvector signs are arbitrary: one sign per output dimension
    return np.abs(a - b * sign).max() < atol


def test_gcl_whitening_is_apply_pcas_maths():
    from netvlad_port.errors import NetVladPortError
    from netvlad_port.pca import gcl_whitening

    rng = np.random.default_rng(0)
    x, q = rng.random((60, 10)), rng.random((7, 10))
    m, p = gcl_whitening(x, 6)
    m_ref, p_ref = _gcl_literal(x, 6)
    assert np.allclose(m, m_ref.ravel())
    assert _same_up_to_sign(_whitenapply(q, m, p), _whitenapply(q, m_ref, p_ref), 1e-10)
    m, p = gcl_whitening(x, 10)  # all dimensions: unit covariance over the fit set
    assert np.allclose(np.cov(p @ (x - m).T, bias=True), np.eye(10), atol=1e-8)
    # more dimensions than descriptors: the Gram matrix gives the covariance's leading eigenvectors
    x = rng.random((12, 30))
    m, p = gcl_whitening(x, 5)
    xc = x - x.mean(0)
    lam, e = np.linalg.eigh(xc.T @ xc / 12)
    ref = e[:, ::-1][:, :5].T / np.sqrt(lam[::-1][:5])[:, None]
    assert _same_up_to_sign(p.T, ref.T, 1e-10)
    with pytest.raises(NetVladPortError, match="span only 11 dimensions"):
        gcl_whitening(x, 12)  # 12 centred points span 11 dimensions; GCL would divide by zero


def test_pca_fit_on_database_matches_brute_force(world, tmp_path):
    from netvlad_port.converted import load_converted
    from netvlad_port.loading import load
    from netvlad_port.pca import pca_features

    out = tmp_path / "white"
    res = CliRunner().invoke(main, ["pca", str(world.net), "--dataset", "msls-val", "--root", str(world.data),
                                    "--fit-on", "database", "--pca-dim", "12", "-o", str(out), "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    view = open_dataset("msls-val", world.data).evaluation_view("gcl")
    assert view.db_pano.sum() == 4 and "the 40 database images" in res.output  # panoramas are in GCL's fit
    feats = pca_features(world.spec, view, n_train_cap=10**6, progress=False).astype(np.float64)
    assert feats.shape == (40, 32)
    # brute force: covariance / N, its top 12 eigenpairs, P = diag(lambda^-1/2) E'
    m = feats.mean(0)
    lam, e = np.linalg.eigh((feats - m).T @ (feats - m) / len(feats))
    p = e[:, ::-1][:, :12].T / np.sqrt(lam[::-1][:12])[:, None]
    white = load_converted(out)
    assert white.meta["pca_fit"] == "database:msls-val"
    got = pca_features(white, view, n_train_cap=10**6, progress=False)
    assert _same_up_to_sign(got, _whitenapply(feats, m, p), 2e-4)
    assert pca_fit_of(load(out)) == "database:msls-val"
    test = CliRunner().invoke(main, ["test", str(out), "--dataset", "msls-val", "--root", str(world.data),
                                     "--protocol", "gcl", "-o", str(tmp_path / "t"), "--quiet"])  # fmt: skip
    assert test.exit_code == 0, test.output
    assert json.loads((tmp_path / "t" / "results.json").read_text())["pca_fit"] == "database:msls-val"
    assert "PCA fitted on database:msls-val" in test.output
    bad = CliRunner().invoke(main, ["pca", str(world.net), "--dataset", "msls-val", "--root", str(world.data),
                                    "--fit-on", "database", "--pca-dim", "33", "-o", str(tmp_path / "b")])  # fmt: skip
    assert bad.exit_code != 0 and "--pca-dim 33" in bad.output and "Traceback" not in bad.output


def test_pca_fit_label_of_addpca_networks(small_spec):
    from netvlad_port.model import SimpleNN

    assert pca_fit_of(SimpleNN(small_spec)) == "train"  # a WPCA layer without a record: addPCA's
    assert pca_fit_of(SimpleNN(small_spec.__class__(small_spec.layers[:-2], dict(small_spec.meta)))) is None


# -- database panoramas ranked as misses (GCL validate.py:38-46) ----------------------------------------------


def _hand_city(root, db_east, db_pano, q_east, city="cph", subtask=None):
    """One MSLS city written by hand; easting in metres, all on one line, compass 0."""
    for sub, east, pano in (("database", db_east, db_pano), ("query", q_east, [False] * len(q_east))):
        keys = [f"{sub[0]}{i}" for i in range(len(east))]
        write_msls_city(root, city, sub, keys, [(e, 0.0) for e in east], [0.0] * len(east), pano)
        if subtask is not None:
            rows = [["", "all", "d2n"]] + [[str(i), "True", str(v)] for i, v in enumerate(subtask[sub])]
            with open(root / "train_val" / city / sub / "subtask_index.csv", "w", newline="") as f:
                csv.writer(f).writerows(rows)


def test_database_panoramas_count_as_misses(tmp_path):
    # d0 is a panorama at the query's place; d1 (5 m) is the only positive; d2, d3 are far away.
    _hand_city(tmp_path, [0.0, 5.0, 100.0, 200.0], [True, False, False, False], [0.0, 200.0])
    feats_db = np.array([[0.0], [2.0], [1.0], [3.0]], np.float32)  # q0 ranks d0, d2, d1, d3
    feats_q = np.array([[0.0], [3.0]], np.float32)  # q1 (at d3) ranks d3 first
    ranked = DbMslsEval(tmp_path, "val", ["cph"], rank_db_panoramas=True)
    dropped = DbMslsEval(tmp_path, "val", ["cph"]).evaluation_view("gcl", db_panoramas="drop")
    assert ranked.num_images == 4 and dropped.num_images == 3 and ranked.pos_q(0).tolist() == [1]
    r = test_from_fn(ranked, feats_db, feats_q, (1, 2, 3), protocol="gcl")
    d = test_from_fn(dropped, feats_db[1:], feats_q, (1, 2, 3), protocol="gcl")
    # hand-worked: ranked q0 finds d1 at rank 3 (AP@3 = 1/3), dropped at rank 2 (AP@2 = AP@3 = 1/2); q1 at rank 1
    assert r.recalls == pytest.approx([0.5, 0.5, 1.0]) and r.maps == pytest.approx([0.5, 0.5, (1 / 3 + 1) / 2])
    assert d.recalls == pytest.approx([0.5, 1.0, 1.0]) and d.maps == pytest.approx([0.5, 0.75, 0.75])
    # the default of --protocol gcl is GCL's (ranked); MATLAB's protocol keeps ours (dropped)
    base = DbMslsEval(tmp_path, "val", ["cph"])
    assert isinstance(base, DbMsls) and base.evaluation_view("gcl").num_images == 4
    assert base.evaluation_view("matlab").num_images == 3


# -- subtasks (mapillary_sls msls.py:101-111) -------------------------------------------------------------


def test_subtask_filters_queries_and_database_by_hand(tmp_path):
    subtask = {"database": [True, False, True, True], "query": [False, True]}
    _hand_city(tmp_path, [0.0, 5.0, 100.0, 200.0], [False, True, False, False], [0.0, 200.0], subtask=subtask)
    db = DbMslsEval(tmp_path, "val", ["cph"])
    view = db.evaluation_view("gcl", subtask="day2night")  # column d2n; the panorama d1 is outside it
    assert view.name == "msls_cph-d2n"
    assert [n.split("/")[-1] for n in view.db_image_fns] == ["d0.jpg", "d2.jpg", "d3.jpg"]
    assert [n.split("/")[-1] for n in view.q_image_fns] == ["q1.jpg"]
    assert view.pos_q(0).tolist() == [2]  # q1 at 200 m: d3, the third database image of the subtask
    with pytest.raises(DatasetError, match="--subtask spring: expected one of all, summer2winter"):
        db.evaluation_view("gcl", subtask="spring")
    with pytest.raises(DatasetError, match=r"subtask_index.csv: no column 'n2o'"):
        db.evaluation_view("gcl", subtask="n2o")
    (tmp_path / "train_val" / "cph" / "query" / "subtask_index.csv").unlink()
    with pytest.raises(DatasetError, match=r"cph/query/subtask_index.csv: missing"):
        db.evaluation_view("gcl", subtask="d2n")


def test_subtask_end_to_end_on_the_synthetic_layout(world, tmp_path):
    view = open_dataset("msls-val", world.data).evaluation_view("matlab", subtask="d2n")
    expected = {}
    for kind, sub in (("q", "query"), ("db", "database")):  # read the csv files here, independently
        names = []
        for city in ("cph", "sf"):
            folder = world.data / "train_val" / city / sub
            for s, r in zip(_csv(folder / "subtask_index.csv"), _csv(folder / "raw.csv")):
                if s["d2n"] == "True" and r["pano"] == "False":
                    names.append(f"{city}/{sub}/images/{r['key']}.jpg")
        expected[kind] = names
    assert view.q_image_fns == expected["q"] and view.db_image_fns == expected["db"]
    assert 0 < view.num_queries < 18 and 0 < view.num_images < 36
    res = CliRunner().invoke(main, ["test", str(world.net), "--dataset", "msls-val", "--root", str(world.data),
                                    "--protocol", "gcl", "--subtask", "day2night", "-o", str(tmp_path / "t"),
                                    "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "t" / "results.json").read_text())
    with_pos = sum(len(v.pos_q(i)) > 0 for v in [view] for i in range(v.num_queries))
    assert record["dataset"] == "msls_val-d2n" and record["num_queries"] == with_pos
    bad = CliRunner().invoke(main, ["test", str(world.net), "--dataset", "msls-val", "--root", str(world.data),
                                    "--subtask", "dusk", "-o", str(tmp_path / "u")])  # fmt: skip
    assert bad.exit_code != 0 and "--subtask dusk: expected one of" in bad.output and "Traceback" not in bad.output


def test_msls_options_are_refused_elsewhere():
    from types import SimpleNamespace

    from netvlad_port.errors import NetVladPortError
    from netvlad_port.retrieval import evaluation_view

    other = SimpleNamespace(name="pitts30k_test")
    assert evaluation_view(other, "gcl") is other
    for options in ({"subtask": "d2n"}, {"task": "im2seq"}, {"db_panoramas": "rank"}):
        with pytest.raises(NetVladPortError, match="for MSLS datasets only"):
            evaluation_view(other, "gcl", **options)


# -- MSLS-test: the predictions file of the benchmark server ----------------------------------------------------


def _hand_test_city(root, city, db_keys, q_keys):
    for sub, keys in (("database", db_keys), ("query", q_keys)):
        folder = root / "test" / city / sub
        folder.mkdir(parents=True)
        rows = [["", "key", "sequence_key", "frame_number"]] + [[str(i), k, "s", str(i)] for i, k in enumerate(keys)]
        with open(folder / "seq_info.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)


def test_msls_test_predictions_format_by_hand(tmp_path):
    _hand_test_city(tmp_path, "miami", ["a", "b", "c"], ["x", "y"])
    _hand_test_city(tmp_path, "athens", ["d", "e"], ["z"])
    db = open_dataset("msls-test", tmp_path)
    assert isinstance(db, DbMslsTest) and db.cities == ["miami", "athens"] and not db.has_ground_truth
    feats_db = np.array([[0.0], [1.0], [3.0], [1.0], [0.9]], np.float32)  # a b c | d e
    feats_q = np.array([[0.9], [2.9], [1.0]], np.float32)  # x y | z; z searches athens only
    res, ranking = test_from_fn(db, feats_db, feats_q, (1, 2), protocol="gcl", return_ranking=True)
    assert not res.ground_truth and res.recalls == [] and "recall not computed" in res.table()
    path = write_key_predictions(ranking, 2, tmp_path / "sub" / "predictions.txt")
    assert path.read_text() == "x b a\ny c b\nz d e\n"  # query key, then its K=2 predictions' keys, in order


def test_msls_test_end_to_end(world, tmp_path):
    out = tmp_path / "pred.txt"
    res = CliRunner().invoke(main, ["test", str(world.net), "--dataset", "msls-test", "--root", str(world.data),
                                    "--protocol", "gcl", "-o", str(tmp_path / "t"), "--predictions-out", str(out),
                                    "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "no public ground truth, recall not computed" in res.output and "0.00" not in res.output
    lines = [line.split(" ") for line in out.read_text().splitlines()]
    q_keys = [r["key"] for c in ("miami", "athens") for r in _csv(world.data / "test" / c / "query" / "seq_info.csv")]
    assert [line[0] for line in lines] == q_keys  # every test query, in order
    for line in lines:  # K = 20 (GCL's largest K on MSLS), each from the query's own city
        city = "miami" if line[0].startswith("test0") else "athens"
        db_keys = {r["key"] for r in _csv(world.data / "test" / city / "database" / "seq_info.csv")}
        assert len(line) == 1 + 20 and set(line[1:]) <= db_keys and len(set(line[1:])) == 20
    record = json.loads((tmp_path / "t" / "results.json").read_text())
    assert record["ground_truth"] is False and record["recall_at_n"] == {}


# -- sequence tasks (mapillary_sls msls.py:263-292) ------------------------------------------------------------


def test_sequences_are_arranged_as_mapillary_sls_does():
    from netvlad_port.plugins.gcl.msls_seq import arrange_as_seq

    keys, frames = np.array(list("AAABBB")), np.array([0, 1, 2, 0, 1, 3])
    # centres 1..4 of length 3: only rows 0-2 share a key with consecutive frames (4: frames 0, 1, 3)
    assert arrange_as_seq(keys, frames, 3).tolist() == [[0, 1, 2]]
    assert arrange_as_seq(keys, frames, 1).tolist() == [[i] for i in range(6)]
    assert arrange_as_seq(np.array(list("AAAAA")), np.arange(5), 5).tolist() == [[0, 1, 2, 3, 4]]


def _seq_info(root, city, sub, seq_keys, frames):
    rows = [["", "key", "sequence_key", "frame_number"]]
    rows += [[str(i), f"{sub[0]}{i}", k, str(f)] for i, (k, f) in enumerate(zip(seq_keys, frames))]
    with open(root / "train_val" / city / sub / "seq_info.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_im2seq_by_hand(tmp_path):
    _hand_city(tmp_path, [0.0, 10.0, 20.0, 100.0, 110.0], [False] * 5, [115.0, -20.0])
    _seq_info(tmp_path, "cph", "database", ["S"] * 5, range(5))
    _seq_info(tmp_path, "cph", "query", ["Q", "R"], [0, 0])
    view = DbMslsEval(tmp_path, "val", ["cph"]).evaluation_view("gcl", task="im2seq", seq_length=3)
    assert view.db_seq.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]] and view.q_seq.tolist() == [[0], [1]]
    # q0 at 115 m: d3 (15 m) and d4 (5 m) are within 25 m, in sequences 1 and 2; q1 at -20 m: d0, sequence 0
    assert view.pos_q(0).tolist() == [1, 2] and view.pos_q(1).tolist() == [0]
    db, q = view.combine(np.arange(5, dtype=np.float32)[:, None], np.array([[3.9], [0.0]], np.float32))
    assert db.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]] and q[0] == pytest.approx([3.9] * 3)
    res, ranking = test_from_fn(view, db, q, (1, 2), protocol="gcl", return_ranking=True)
    # q0: sums of squares 27.23 / 12.83 / 4.43 rank sequences 2, 1, 0; q1: 5 / 14 / 29 rank 0, 1, 2
    assert [r.tolist() for r in ranking.retrieved] == [[2, 1, 0], [0, 1, 2]] and res.recalls == [1.0, 1.0]
    path = write_key_predictions(ranking, 2, tmp_path / "p.txt")
    assert path.read_text() == "q0 d2,d3,d4 d1,d2,d3\nq1 d0,d1,d2 d1,d2,d3\n"
    with pytest.raises(DatasetError, match="--seq-length 2: im2seq needs an odd sequence length"):
        DbMslsEval(tmp_path, "val", ["cph"]).evaluation_view("gcl", task="im2seq", seq_length=2)


def test_seq2seq_end_to_end(world, tmp_path):
    out = tmp_path / "p.txt"
    res = CliRunner().invoke(main, ["test", str(world.net), "--dataset", "msls-val", "--root", str(world.data),
                                    "--protocol", "gcl", "--task", "seq2seq", "--seq-length", "3",
                                    "-o", str(tmp_path / "t"), "--predictions-out", str(out), "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "msls_val-seq2seq3" in res.output and "96-D" in res.output  # three 32-D frames
    lines = [line.split(" ") for line in out.read_text().splitlines()]
    assert all(len(key.split(",")) == 3 for line in lines for key in line)
    bad = CliRunner().invoke(main, ["test", str(world.net), "--dataset", "msls-val", "--root", str(world.data),
                                    "--task", "seq2seq", "--seq-length", "3", "--dim", "8",
                                    "-o", str(tmp_path / "u")])  # fmt: skip
    assert bad.exit_code != 0 and "--dim: msls_val-seq2seq" in bad.output and "Traceback" not in bad.output
