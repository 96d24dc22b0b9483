"""Recall@N as testFromFn, checked against an independent brute-force numpy computation."""

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from netvlad_port import feature_store, retrieval
from netvlad_port.cli import main
from netvlad_port.datasets import DbBase, DbTokyo247, write_db_struct

from helpers import E0, N0, line, spec_fields


def brute_force_recall(db, db_feats, q_feats, recall_ns, n_top=100, group=None, stamps=None):
    """Independent: full distance matrix, stable order by (distance, id), MATLAB's recall rule."""
    d = ((q_feats[:, None, :].astype(np.float64) - db_feats[None].astype(np.float64)) ** 2).sum(-1)
    out = np.zeros(len(recall_ns))
    for iq in range(len(q_feats)):
        order = sorted(range(len(db_feats)), key=lambda j: (round(d[iq, j], 5), j))
        if group:
            seen, kept = set(), []
            for j in order:
                if j // group not in seen:
                    seen.add(j // group)
                    kept.append(j)
            order = kept
        if stamps is not None:
            order = [j for j in order if stamps[0][j] != stamps[1][iq]]
        order = order[:n_top]
        pos = set(np.flatnonzero(((db.utm_db - db.utm_q[:, iq : iq + 1]) ** 2).sum(0) <= db.pos_dist_sq_thr))
        first = next((r for r, j in enumerate(order) if j in pos), None)
        for k, n in enumerate(recall_ns):
            out[k] += first is not None and first < min(n, len(order))
    return out / len(q_feats)


def test_random_geometry_matches_brute_force():
    rng = np.random.default_rng(0)
    utm_db = np.stack([E0 + rng.uniform(0, 400, 300), N0 + rng.uniform(0, 400, 300)])
    utm_q = np.stack([E0 + rng.uniform(-100, 500, 80), N0 + rng.uniform(-100, 500, 80)])  # some without positives
    db = DbBase("r", ".", ".", spec_fields(utm_db, utm_q))
    f_db = rng.normal(size=(300, 16)).astype(np.float32)
    f_q = (f_db[rng.integers(0, 300, 80)] + rng.normal(0, 1.0, (80, 16))).astype(np.float32)
    res = retrieval.test_from_fn(db, f_db, f_q)
    assert res.recall_ns == list(retrieval.RECALL_NS)
    assert res.queries_without_positives > 0
    assert np.allclose(res.recalls, brute_force_recall(db, f_db, f_q, res.recall_ns))


def test_query_without_positive_counts_as_failure_and_ties_go_by_index():
    db = DbBase("t", ".", ".", spec_fields(line(0, 100, 200), line(0, 500)))
    f_db = np.array([[1, 0], [0, 1], [1, 0]], np.float32)  # db 0 and 2 tie
    f_q = np.array([[1, 0], [1, 0]], np.float32)
    res, ranks = retrieval.test_from_fn(db, f_db, f_q, recall_ns=[1, 2, 3], return_ranks=True)
    assert ranks[0].tolist()[:2] == [0, 2]
    assert res.recalls == [0.5, 0.5, 0.5] and res.queries_without_positives == 1


def test_tokyo_nms_collapses_12_cutouts(tmp_path):
    utm_db = line(*([0] * 12 + [100] * 12 + [200] * 12))
    write_db_struct(tmp_path / "tokyo247.mat", spec_fields(utm_db, line(200)))
    db = DbTokyo247(tmp_path, tmp_path)
    rng = np.random.default_rng(3)
    f_db = rng.normal(size=(36, 8)).astype(np.float32)
    f_db[:12] = f_db[0] + 0.01 * rng.normal(size=(12, 8))  # panorama 0 is closest to the query, 12 times
    f_q = f_db[:1] + 0.001
    res, ranks = retrieval.test_from_fn(db, f_db, f_q, recall_ns=[1, 2, 3], return_ranks=True)
    panoramas = [int(i) // 12 for i in ranks[0]]
    assert len(panoramas) == 3 and sorted(panoramas) == [0, 1, 2] and panoramas[0] == 0  # one result per panorama
    assert res.recalls == brute_force_recall(db, f_db, f_q, [1, 2, 3], group=12).tolist()


def test_tokyotm_same_timestamp_results_dropped(tmp_path):
    from netvlad_port.datasets import DbTokyoTimeMachine

    s = spec_fields(line(0, 5, 300), line(0), dbTimeStamp=np.array([[1, 2, 1]]), qTimeStamp=np.array([[1]]))
    write_db_struct(tmp_path / "tokyoTM_val.mat", s)
    db = DbTokyoTimeMachine("val", tmp_path, tmp_path)
    f_db = np.array([[0, 0], [0, 3], [0, 1]], np.float32)
    f_q = np.array([[0, 0]], np.float32)
    res, ranks = retrieval.test_from_fn(db, f_db, f_q, recall_ns=[1, 2], return_ranks=True)
    assert ranks[0].tolist() == [1]  # 0 and 2 share the query's timestamp
    assert res.recalls == brute_force_recall(db, f_db, f_q, [1, 2], stamps=(db.db_time_stamp, db.q_time_stamp)).tolist()


def test_demo(tmp_path):
    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert "off-the-shelf" in res.output and "trained + WPCA" in res.output and "\n   1  " in res.output
    for png in ("recall.png", "mosaic.png"):
        with Image.open(tmp_path / "demo" / "eval_trained" / png) as im:
            im.verify()
    trained = json.loads((tmp_path / "demo" / "eval_trained" / "results.json").read_text())
    assert trained["dim"] == 64
    results = json.loads((tmp_path / "demo" / "eval_offtheshelf" / "results.json").read_text())
    assert results["num_queries"] == 200 and results["recall_ns"][:5] == [1, 2, 3, 4, 5]
    assert results["recalls"][0] > 0.2  # well above chance (~10 positives among 300)
    assert results["recall_at_n"]["1"] == results["recalls"][0] and results["recall_at_n"]["100"] > 0.9
    with Image.open(tmp_path / "demo" / "recall.png") as im:  # both curves
        im.verify()
    assert "Outputs in" in res.output and "eval_trained/" in res.output and "train/" in res.output


def test_test_and_search_commands(tiny_world, tmp_path):
    from netvlad_port.datasets import load_synthetic

    out = tmp_path / "eval"

    def test_args(model):
        return [
            "test",
            "--model",
            str(model),
            "--dataset",
            "synthetic-test",
            "--root",
            str(tiny_world.data),
            "--out",
            str(out),
        ]

    args = [*test_args(tiny_world.net), "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["num_queries"] == 24 and results["recall_ns"][:5] == [1, 2, 3, 4, 5]
    # the same evaluation, independently: the stored features + brute force
    db = load_synthetic(tiny_world.data, "test")
    f_db = feature_store.read_h5_descriptors(out / "db.h5", db.db_image_fns)
    f_q = feature_store.read_h5_descriptors(out / "q.h5", db.q_image_fns)
    assert np.allclose(results["recalls"], brute_force_recall(db, f_db, f_q, results["recall_ns"]))
    # the test command reuses the stored features, with cropToDim
    res = CliRunner().invoke(main, args + ["--dim", "32"])
    assert res.exit_code == 0, res.output
    assert "32-D" in res.output
    # search: hloc pairs
    pairs = tmp_path / "pairs.txt"
    res = CliRunner().invoke(
        main, ["search", "--db", str(out / "db.h5"), "--queries", str(out / "q.h5"), "-k", "5", "--out", str(pairs)]
    )
    assert res.exit_code == 0, res.output
    lines = pairs.read_text().splitlines()
    assert len(lines) == 24 * 5 and lines[0].split()[0] == sorted(db.q_image_fns)[0]
    # stored features of another model are refused
    from netvlad_port.fixtures import make_net
    from netvlad_port.matconvnet import write_net

    write_net(make_net("vd16", "preL2_max", width=1 / 16, pca_dim=None), tmp_path / "other.mat")
    res = CliRunner().invoke(main, test_args(tmp_path / "other.mat"))
    assert res.exit_code == 1 and "features of another model" in res.output


def _recall1(out: str) -> float:
    return float(next(line for line in out.splitlines() if line.strip().startswith("1:")).split()[-1])


def _vg_copy(db, dest):
    """The synthetic test split as a VG-format folder (database/, queries/, UTM in the names)."""
    import shutil

    for sub, paths, utm in (("database", [db.db_image(i) for i in range(db.num_images)], db.utm_db),
                            ("queries", [db.q_image(i) for i in range(db.num_queries)], db.utm_q)):  # fmt: skip
        (dest / sub).mkdir(parents=True)
        for i, p in enumerate(paths):
            shutil.copy(p, dest / sub / f"@{utm[0, i]:.2f}@{utm[1, i]:.2f}@17@T@0@0@{i:04d}@.jpg")


def test_test_never_reuses_features_of_other_images_with_the_same_names(tiny_world, tmp_path, monkeypatch):
    """Issue 22's silent wrong recall: another --root with the same image names, and two VG folders both
    called test, each got the first dataset's features from the shared default folder."""
    from netvlad_port.datasets import load_synthetic, make_synthetic
    from netvlad_port.datasets.synthetic import SyntheticConfig

    other = tmp_path / "other"  # the same names, other scenes
    make_synthetic(other, SyntheticConfig(db_per_split=40, queries_per_split=24, image_hw=(48, 64), seed=7))
    monkeypatch.chdir(tmp_path)  # the default results/ folder goes here

    def test(*args):
        res = CliRunner().invoke(main, ["test", str(tiny_world.net), "--quiet", *map(str, args)])
        return res

    first = test("--dataset", "synthetic-test", "--root", tiny_world.data)
    second = test("--dataset", "synthetic-test", "--root", other)
    own = test("--dataset", "synthetic-test", "--root", other, "-o", tmp_path / "own")
    assert first.exit_code == second.exit_code == own.exit_code == 0, (first.output, second.output, own.output)
    assert _recall1(second.output) == _recall1(own.output) != _recall1(first.output)
    assert len(list((tmp_path / "results").iterdir())) == 2  # one folder per dataset identity
    shared = test("--dataset", "synthetic-test", "--root", other, "-o", tmp_path / "own2")
    assert shared.exit_code == 0
    again = test("--dataset", "synthetic-test", "--root", tiny_world.data, "-o", tmp_path / "own2")
    assert again.exit_code == 1 and "other image files" in again.output and "--force" in again.output
    forced = test("--dataset", "synthetic-test", "--root", tiny_world.data, "-o", tmp_path / "own2", "--force")
    assert forced.exit_code == 0 and _recall1(forced.output) == _recall1(first.output)

    for name, data in (("vg", tiny_world.data), ("vg3", other)):
        _vg_copy(load_synthetic(data, "test"), tmp_path / name / "images" / "test")
    vg = test("--dataset", tmp_path / "vg" / "images" / "test")
    vg3 = test("--dataset", tmp_path / "vg3" / "images" / "test")
    vg3_own = test("--dataset", tmp_path / "vg3" / "images" / "test", "-o", tmp_path / "vg3_own")
    assert _recall1(vg3.output) == _recall1(vg3_own.output) != _recall1(vg.output)


def _captured_figures(monkeypatch) -> dict:
    """The matplotlib Figures the plot functions save, by file name (instead of writing them)."""
    from netvlad_port import plots

    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(Path(path).name, fig) and Path(path))
    return figures


def test_the_recall_title_names_each_curves_recall_at_1(monkeypatch):
    """Issue 22: the demo's recall.png named only the first curve's R@1."""
    from netvlad_port.plots import plot_recall

    figures = _captured_figures(monkeypatch)
    ns = list(retrieval.RECALL_NS)
    results = [retrieval.Results("d", ns, [r] * len(ns), 10, 0, 8, "x") for r in (0.123, 0.456)]
    plot_recall(results, "recall.png", labels=["before", "after"])
    title = figures["recall.png"].axes[0].get_title()
    assert "before 12.3%" in title and "after 45.6%" in title


def test_gcl_recall_plot_shows_map_the_radius_and_image_names(tiny_world, tmp_path, monkeypatch):
    """Issue 22: with --protocol gcl the plot has no mAP, its radius is the dataset's, the mosaic names images."""
    from PIL import ImageDraw

    from netvlad_port.datasets import load_synthetic, make_synthetic
    from netvlad_port.datasets.synthetic import SyntheticConfig

    make_synthetic(tmp_path / "data", SyntheticConfig(db_per_split=40, queries_per_split=24, image_hw=(48, 64),
                                                      pos_dist_thr=30.0))  # fmt: skip
    figures, texts = _captured_figures(monkeypatch), []
    draw_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, text, *a, **k: texts.append(text) or
                        draw_text(self, xy, text, *a, **k))  # fmt: skip
    out = tmp_path / "eval"
    args = ["--dataset", "synthetic-test", "--root", tmp_path / "data", "--protocol", "gcl", "-o", out, "--quiet"]
    res = CliRunner().invoke(main, ["test", str(tiny_world.net), *map(str, args)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    ax = figures["recall.png"].axes[0]
    assert f"mAP {results['maps'][0] * 100:.1f}%" in ax.get_title()
    curves = {line.get_label(): line.get_ydata().tolist() for line in ax.get_lines()}
    assert np.allclose(curves[f"{results['dataset']} mAP"], np.array(results["maps"]) * 100)
    assert "within 30 m" in ax.get_legend().get_title().get_text()
    db = load_synthetic(tmp_path / "data", "test")
    shown = [t.replace("\n", "") for t in texts]
    assert len(set(shown) & set(db.q_image_fns)) == 6 and len([t for t in shown if t in db.db_image_fns]) == 30


def test_recall_per_epoch_plot_has_epochs_the_best_the_loss_and_a_title(tiny_world, tmp_path, monkeypatch):
    """Issue 22: recall_per_epoch.png had fractional epoch ticks, no best epoch, no loss and no title."""
    figures = _captured_figures(monkeypatch)
    out = tmp_path / "my_run"
    res = CliRunner().invoke(main, ["train", str(tiny_world.net), "--dataset", "synthetic", "--root",
                                    str(tiny_world.data), "--epochs", "2", "--pca-dim", "0", "--n-neg-choice", "20",
                                    "--loss", "triplet", "-o", str(out), "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    fig = figures["recall_per_epoch.png"]
    fig.canvas.draw()
    ax = fig.axes[0]
    assert all(float(t).is_integer() for t in ax.get_xticks()) and {0, 1, 2} <= set(ax.get_xticks())
    best = json.loads((out / "summary.json").read_text())["best_epoch"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"best epoch {best}" in legend
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    means = [np.mean([r["loss"] for r in records if "batch" in r and r["epoch"] == e]) for e in (1, 2)]
    loss_lines = [line for a in fig.axes[1:] for line in a.get_lines()]
    assert len(loss_lines) == 1 and np.allclose(loss_lines[0].get_ydata(), means)
    assert "my_run" in ax.get_title() and "triplet" in ax.get_title()


def _brute_force_top(db_feats, q_feats, k):
    """Independent: each query's first k database ids by (squared distance, id), and those distances."""
    d = ((q_feats[:, None, :].astype(np.float64) - db_feats[None].astype(np.float64)) ** 2).sum(-1)
    order = [sorted(range(len(db_feats)), key=lambda j: (round(d[iq, j], 5), j))[:k] for iq in range(len(q_feats))]
    return order, d


def test_test_writes_recall_ns_predictions_pairs_and_preds(tiny_world, tmp_path, monkeypatch):
    """Issue 22: test takes --recall-ns as train does, and writes what VPR-methods-evaluation and hloc users
    expect: per-query predictions (csv), hloc pairs, preds/ images (all, or only the wrong ones)."""
    import csv
    import os

    from netvlad_port.datasets import load_synthetic

    figures, out = _captured_figures(monkeypatch), tmp_path / "eval"
    data = tiny_world.data

    def test(*args):
        res = CliRunner().invoke(main, ["test", str(tiny_world.net), "--dataset", "synthetic-test", "--root",
                                        str(data), "-o", str(out), "--quiet", *map(str, args)])  # fmt: skip
        assert res.exit_code == 0, res.output
        return res

    res = test("--recall-ns", "7,1,3", "--num-preds-to-save", "3", "--save-only-wrong")
    db = load_synthetic(data, "test")
    f_db = feature_store.read_h5_descriptors(out / "db.h5", db.db_image_fns)
    f_q = feature_store.read_h5_descriptors(out / "q.h5", db.q_image_fns)
    results = json.loads((out / "results.json").read_text())
    assert results["recall_ns"] == [1, 3, 7] and list(results["recall_at_n"]) == ["1", "3", "7"]
    assert np.allclose(results["recalls"], brute_force_recall(db, f_db, f_q, [1, 3, 7]))
    assert [line.split(":")[0].strip() for line in res.output.splitlines() if line.startswith("   ")] == ["1", "3", "7"]
    assert figures["recall.png"].axes[0].get_lines()[0].get_xdata().tolist() == [1, 3, 7]
    # predictions.csv and pairs.txt: the first 7 of each query, names under the folder holding both image folders
    top, d = _brute_force_top(f_db, f_q, 7)
    q_names = [os.path.relpath(db.q_image(i), data) for i in range(db.num_queries)]
    db_names = [os.path.relpath(db.db_image(i), data) for i in range(db.num_images)]
    pos = [set(np.flatnonzero(((db.utm_db - db.utm_q[:, [iq]]) ** 2).sum(0) <= db.pos_dist_sq_thr))
           for iq in range(db.num_queries)]  # fmt: skip
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    expected = [(q_names[iq], str(r + 1), db_names[j], int(j in pos[iq])) for iq in range(24) for r, j in
                enumerate(top[iq])]  # fmt: skip
    assert [(r["query"], r["rank"], r["prediction"], int(r["correct"])) for r in rows] == expected
    dists = [d[iq, j] for iq in range(24) for j in top[iq]]
    assert np.allclose([float(r["distance"]) for r in rows], dists, rtol=1e-4, atol=1e-5)
    assert (out / "pairs.txt").read_text().splitlines() == [f"{q} {p}" for q, _, p, _ in expected]
    # preds/: the queries whose first prediction is wrong; then every query
    wrong = {f"{iq:02d}.jpg" for iq in range(24) if top[iq][0] not in pos[iq]}
    assert wrong and {p.name for p in (out / "preds").iterdir()} == wrong
    test("--recall-values", "1,5", "--num-preds-to-save", "2")
    assert len(list((out / "preds").iterdir())) == 24
    assert json.loads((out / "results.json").read_text())["recall_ns"] == [1, 5]


def test_vg_folders_take_a_radius_and_their_dataset_name(tiny_world, tmp_path, monkeypatch):
    """Issue 22: --positive-dist-threshold for VG folders, in the results folder key; .../pitts30k/images/test is
    named pitts30k, not test."""
    from types import SimpleNamespace

    from netvlad_port.datasets import load_synthetic

    db = load_synthetic(tiny_world.data, "test")
    folder = tmp_path / "vgset" / "images" / "test"
    _vg_copy(db, folder)
    monkeypatch.chdir(tmp_path)  # the default results/ folder goes here

    def test(*args):
        return CliRunner().invoke(main, ["test", str(tiny_world.net), "--dataset", str(folder), "--quiet",
                                         *map(str, args)])  # fmt: skip

    default = test()
    assert default.exit_code == 0, default.output
    assert [p.name.split("-")[0] for p in (tmp_path / "results").iterdir()] == ["vgset"]
    assert default.output.startswith("vgset: ")
    wide = test("--positive-dist-threshold", "60")
    assert wide.exit_code == 0, wide.output
    runs = sorted((tmp_path / "results").glob("*/*/results.json"))
    assert len(runs) == 2 and all(p.parent.parent.name.startswith("vgset-") for p in runs)
    by_thr = {json.loads(p.read_text())["pos_dist_thr"]: json.loads(p.read_text()) for p in runs}
    assert set(by_thr) == {25.0, 60.0} and by_thr[60.0]["dataset"] == "vgset"
    names = {sub: sorted(p.name for p in (folder / sub).iterdir()) for sub in ("database", "queries")}
    f_db = feature_store.read_h5_descriptors(runs[0].parent / "db.h5", names["database"])
    f_q = feature_store.read_h5_descriptors(runs[0].parent / "q.h5", names["queries"])
    utm = {sub: np.array([[float(n.split("@")[1]), float(n.split("@")[2])] for n in names[sub]]).T for sub in names}
    for thr, res in by_thr.items():
        geometry = SimpleNamespace(utm_db=utm["database"], utm_q=utm["queries"], pos_dist_sq_thr=thr**2)
        assert np.allclose(res["recalls"], brute_force_recall(geometry, f_db, f_q, res["recall_ns"]))
    assert by_thr[60.0]["recalls"] != by_thr[25.0]["recalls"]
    refused = CliRunner().invoke(main, ["test", str(tiny_world.net), "--dataset", "synthetic-test", "--root",
                                        str(tiny_world.data), "--positive-dist-threshold", "60"])  # fmt: skip
    assert refused.exit_code == 1 and "for VG-format folders only" in refused.output
