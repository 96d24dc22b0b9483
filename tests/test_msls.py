"""MSLS in its released layout (docs/gcl.md#msls): the csv reader, panoramas, graded labels from
compass angles and from ``<city>_gt.h5``, per-city retrieval, GCL's K list, and the GCL demo."""

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from netvlad_port.cli import main
from netvlad_port.datasets import DatasetError, open_dataset
from netvlad_port.datasets.synthetic import SyntheticConfig, make_synthetic
from netvlad_port.plugins.gcl.labels import fov_overlap
from netvlad_port.plugins.gcl.msls import PANO_EVERY, DbMsls, read_msls_folder


@pytest.fixture(scope="module")
def msls_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("msls")
    make_synthetic(root, SyntheticConfig(db_per_split=40, queries_per_split=20, image_hw=(48, 64)), layout="msls")
    return root


def test_layout_and_reader_leave_panoramas_out(msls_root):
    assert sorted(p.name for p in (msls_root / "train_val").iterdir()) == ["cph", "london", "sf", "trondheim"]
    db = open_dataset("msls-val", msls_root)
    assert isinstance(db, DbMsls) and db.cities == ["cph", "sf"]
    raw = {c: read_msls_folder(msls_root / "train_val" / c / "database") for c in db.cities}
    assert db.num_images == sum((~r["pano"]).sum() for r in raw.values()) < 40  # every tenth is a panorama
    assert all(r["pano"][PANO_EVERY - 1] for r in raw.values())
    keys = [n.split("/")[-1][:-4] for n in db.db_image_fns]
    assert not {k for r in raw.values() for k in r["key"][r["pano"]]} & set(keys)
    db.check_images()  # names resolve to train_val/<city>/database/images/<key>.jpg
    assert db.db_image(0).parent == msls_root / "train_val" / "cph" / "database" / "images"
    sf = db.db_city == 1  # the second city keeps its own positions
    assert np.allclose(db.utm_db[1, sf], raw["sf"]["northing"][~raw["sf"]["pano"]])
    assert np.allclose(db.heading_db, np.deg2rad(np.concatenate([r["ca"][~r["pano"]] for r in raw.values()])))


def test_graded_labels_are_the_field_of_view_overlap_of_the_compass_angles(msls_root):
    db = open_dataset("msls-train", msls_root)
    iq = 3
    psi = db.similarity(iq, np.arange(db.num_images), "graded")
    brute = [fov_overlap(db.utm_q[:, iq], db.heading_q[iq], db.utm_db[:, j], db.heading_db[j])
             for j in range(db.num_images)]  # fmt: skip
    assert np.allclose(psi, brute, atol=1e-6) and psi.max() > 0.5 and (psi == 0).sum() > db.num_images / 2
    assert (psi[db.db_city != db.q_city[iq]] == 0).all()  # another city is never similar
    assert db.similarity(iq, np.arange(db.num_images), "binary").tolist() == db.is_pos_q(iq, np.arange(
        db.num_images)).astype(float).tolist()  # fmt: skip


def test_released_gt_h5_gives_the_labels(msls_root, tmp_path):
    import h5py

    root = tmp_path / "m"
    shutil.copytree(msls_root, root)
    db0 = open_dataset("msls-val", root)
    n_q, n_db = (len(read_msls_folder(root / "train_val" / "cph" / s)["key"]) for s in ("query", "database"))
    fov = np.random.default_rng(0).random((n_q, n_db)).astype(np.float32)
    with h5py.File(root / "train_val" / "cph_gt.h5", "w") as f:
        f["fov"], f["sim"] = fov, (fov > 0.7).astype(np.float32)
    db = open_dataset("msls-val", root)
    cph = np.flatnonzero(db.db_city == 0)
    for iq in (0, 5):  # rows by csv row, columns by csv row, panoramas skipped
        assert np.allclose(db.similarity(iq, cph, "graded"), fov[db.q_row[iq], db.db_row[cph]])
        assert np.allclose(db.similarity(iq, cph, "binary"), fov[db.q_row[iq], db.db_row[cph]] > 0.7)
    sf_q = int(np.flatnonzero(db.q_city == 1)[0])  # no sf_gt.h5: computed labels as before
    everything = np.arange(db.num_images)
    assert np.allclose(db.similarity(sf_q, everything, "graded"), db0.similarity(sf_q, everything, "graded"))
    with h5py.File(root / "train_val" / "cph_gt.h5", "w") as f:
        f["fov"] = fov[:, :-1]
    with pytest.raises(DatasetError, match=r"cph_gt.h5: fov is .* but cph has"):
        open_dataset("msls-val", root).similarity(0, cph, "graded")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: f.write_text(f.read_text().replace("easting", "east")), "postprocessed.csv: no column 'easting'"),
        (lambda f: f.with_name("raw.csv").write_text(f.with_name("raw.csv").read_text().replace(",False", ",maybe", 1)),
         "raw.csv: column 'pano' holds 'maybe'"),
        (lambda f: f.with_name("raw.csv").write_text(f.with_name("raw.csv").read_text().replace("val0q0000", "x", 1)),
         "postprocessed.csv and raw.csv differ at data row 1"),
        (lambda f: f.write_text(re.sub(r",4\d+\.\d+,", ",nan,", f.read_text(), count=1)), "'northing' holds NaN"),
        (lambda f: f.unlink(), "postprocessed.csv: missing"),
    ],
)  # fmt: skip
def test_damaged_csv_files_are_named(msls_root, tmp_path, damage, message):
    root = tmp_path / "m"
    shutil.copytree(msls_root, root)
    damage(root / "train_val" / "cph" / "query" / "postprocessed.csv")
    res = CliRunner().invoke(main, ["test", str(root / "none"), "--dataset", "msls-val", "--root", str(root)])
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output


def test_absent_cities_and_the_test_split(msls_root, tmp_path):
    with pytest.warns(UserWarning, match="MSLS val without sf"):
        root = tmp_path / "m"
        shutil.copytree(msls_root, root)
        shutil.rmtree(root / "train_val" / "sf")
        assert open_dataset("msls-val", root).cities == ["cph"]
    with pytest.raises(DatasetError, match="none of the MSLS val cities"):
        open_dataset("msls-val", tmp_path)
    with pytest.raises(DatasetError, match="none of the MSLS test cities"):  # msls-test: the test cities' folders
        open_dataset("msls-test", tmp_path)
    assert open_dataset("msls-test", msls_root).pos_q(0).size == 0  # no public positions


def test_search_stays_in_the_city_and_gcl_uses_msls_k(msls_root, tmp_path):
    from netvlad_port.plugins.gcl.protocol import gcl_recall_ns
    from netvlad_port.retrieval import test_from_fn

    db = open_dataset("msls-val", msls_root)
    rng = np.random.default_rng(0)
    feats_db, feats_q = rng.random((db.num_images, 8), np.float32), rng.random((db.num_queries, 8), np.float32)
    res, ranks = test_from_fn(db, feats_db, feats_q, gcl_recall_ns(db), return_ranks=True, protocol="gcl")
    for iq, r in enumerate(ranks):
        assert len(r) == (db.db_city == db.q_city[iq]).sum() and (db.db_city[r] == db.q_city[iq]).all()
        mine = np.flatnonzero(db.db_city == db.q_city[iq])  # the city's own exhaustive order
        d = ((feats_db[mine] - feats_q[iq]) ** 2).sum(1)
        assert r[:5].tolist() == mine[np.argsort(d, kind="stable")][:5].tolist()
    assert res.recall_ns == [1, 5, 10, 20] and res.search.endswith("per group")


def test_demo_gcl_raises_recall_and_map(tmp_path):
    res = CliRunner().invoke(main, ["demo", "--recipe", "gcl", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    before, after = (json.loads((tmp_path / "demo" / f"eval_{k}" / "results.json").read_text())
                     for k in ("offtheshelf", "trained"))  # fmt: skip
    assert before["protocol"] == after["protocol"] == "gcl" and before["recall_ns"] == [1, 5, 10, 20]
    assert after["recall_at_n"]["1"] > before["recall_at_n"]["1"] + 0.05
    assert np.mean(list(after["map_at_n"].values())) > np.mean(list(before["map_at_n"].values())) + 0.02
    assert "mAP trained" in res.output and "msls_val: 180 queries" in res.output
    cfg = json.loads((tmp_path / "demo" / "offtheshelf" / "config.json").read_text())  # GCL's own layout
    assert [(layer["type"], layer["params"]) for layer in cfg["layers"]] == [
        ("backbone", {"arch": "vgg16", "cut": "pool5", "width": 0.125}), ("gem", {}),
        ("layerWholeL2Normalize", {"flavour": "pytorch"})]  # fmt: skip
    assert cfg["meta"]["preprocess"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
