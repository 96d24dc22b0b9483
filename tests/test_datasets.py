"""dbBase semantics (docs/matlab.md#datasets) on crafted geometry, spec files in every encoding, other formats."""

import numpy as np
import pytest
import scipy.io

from netvlad_port.datasets import (
    DB_STRUCT_FIELDS,
    DatasetError,
    DbBase,
    DbPitts,
    DbTokyo247,
    DbTokyoTimeMachine,
    from_npz,
    from_vg_folder,
    load_db_struct,
    write_db_struct,
)

from helpers import E0, N0, line, spec_fields


def test_positive_radius_is_inclusive_and_nontrivial_excludes_1m():
    db = DbBase("t", ".", ".", spec_fields(line(0, 0.5, 1.0, 1.01, 10.0, 10.01, 25.0, 25.001, 100), line(0)))
    assert db.pos_q(0).tolist() == [0, 1, 2, 3, 4, 5, 6]  # d <= 25 m, 25 m included
    assert db.nontrivial_pos_q(0).tolist() == [3, 4]  # 1 < d^2 <= 100: 1 m out, 10 m in
    assert db.is_pos_q(0, [8, 6, 7]).tolist() == [False, True, False]


def test_sample_negs_are_beyond_25m_unique_and_seeded():
    db = DbBase("t", ".", ".", spec_fields(line(*np.arange(0, 500, 2.0)), line(100)))
    negs = db.sample_negs_q(0, 50, np.random.default_rng(1))
    d = np.abs(db.utm_db[0, negs] - (E0 + 100))
    assert len(negs) == len(set(negs.tolist())) == 50 and (d > 25).all()
    assert np.array_equal(negs, db.sample_negs_q(0, 50, np.random.default_rng(1)))
    assert (
        len(db.sample_negs_q(0, 10_000, np.random.default_rng(0))) == 250 - 25
    )  # all there are (76..124 m are within 25 m of 100)


@pytest.mark.parametrize("version", ["v7", "v7.3"])
def test_dbpitts_reads_spec_in_matlab_field_order(tmp_path, version):
    s = spec_fields(line(0, 10, 40), line(5, 60))
    write_db_struct(tmp_path / "pitts30k_test.mat", s, version=version)
    raw = scipy.io.loadmat(tmp_path / "pitts30k_test.mat")["dbStruct"] if version == "v7" else None
    if raw is not None:
        assert raw.dtype.names == DB_STRUCT_FIELDS  # the positional order Nanne's parser relies on
    db = DbPitts(False, "test", root=tmp_path / "Pittsburgh", spec_dir=tmp_path)
    assert db.name == "pitts30k_test" and db.num_images == 3 and db.num_queries == 2
    assert db.db_image(1) == tmp_path / "Pittsburgh" / "images" / "db/001.jpg"
    assert db.q_image(0) == tmp_path / "Pittsburgh" / "queries" / "q/000.jpg"
    assert db.pos_q(0).tolist() == [0, 1] and db.pos_q(1).tolist() == [2]


def test_spec_errors(tmp_path):
    scipy.io.savemat(tmp_path / "nodb.mat", {"foo": 1})
    with pytest.raises(DatasetError, match=r"nodb\.mat: no variable 'dbStruct'"):
        load_db_struct(tmp_path / "nodb.mat")
    with pytest.raises(DatasetError, match=r"pitts30k_val\.mat: dataset specification not found"):
        DbPitts(False, "val", root=tmp_path)
    bad = spec_fields(line(0, 10, 40), line(5))
    bad["utmDb"] = line(0, 10)
    write_db_struct(tmp_path / "pitts30k_train.mat", bad)
    with pytest.raises(DatasetError, match=r"utmDb has 2 columns but there are 3 db image names"):
        DbPitts(False, "train", root=tmp_path)


def test_missing_images_are_counted(tmp_path):
    (tmp_path / "images" / "db").mkdir(parents=True)
    (tmp_path / "images" / "db" / "000.jpg").write_bytes(b"x")
    write_db_struct(tmp_path / "pitts30k_test.mat", spec_fields(line(0, 10, 40), line(5, 60)))
    db = DbPitts(False, "test", root=tmp_path, spec_dir=tmp_path)
    with pytest.raises(DatasetError, match=r"4 of 5 image files are missing \(first: .*db/001\.jpg"):
        db.check_images()


def test_tokyo247_png_fallback_and_tokyotm_timestamps(tmp_path):
    write_db_struct(tmp_path / "tokyo247.mat", spec_fields(line(*range(24)), line(0)))
    (tmp_path / "images" / "db").mkdir(parents=True)
    (tmp_path / "images" / "db" / "000.png").write_bytes(b"x")
    db = DbTokyo247(tmp_path, tmp_path)
    assert db.db_image_fns[0] == "db/000.png" and db.retrieve_factor() == 12
    tm = spec_fields(
        line(0, 3, 6), line(0), dbTimeStamp=np.array([[200801, 200901, 200801]]), qTimeStamp=np.array([[200801]])
    )
    write_db_struct(tmp_path / "tokyoTM_val.mat", tm)
    tmdb = DbTokyoTimeMachine("val", tmp_path, tmp_path)
    assert tmdb.nontrivial_pos_q(0).tolist() == [1]  # 6 m has the same timestamp, 0 m is trivial
    ids, ds = tmdb.nn_search_postprocess(0, np.array([2, 0, 1]), np.array([0.1, 0.2, 0.3]), 2)
    assert ids.tolist() == [1]


def test_vg_folder_and_npz(tmp_path):
    for sub, east in (("database", [0, 30]), ("queries", [2])):
        (tmp_path / "test" / sub).mkdir(parents=True)
        for e in east:
            (tmp_path / "test" / sub / f"@{E0 + e:.2f}@{N0:.2f}@17@T@40.4@-79.9@x@@@@@@@.jpg").write_bytes(b"x")
    db = from_vg_folder(tmp_path / "test")
    assert db.num_images == 2 and db.pos_q(0).tolist() == [0]
    np.savez(
        tmp_path / "gt.npz", utmQ=np.array([[E0 + 2, N0]]), utmDb=np.array([[E0, N0], [E0 + 30, N0]]), posDistThr=25
    )
    (tmp_path / "db.txt").write_text("a.jpg\nb.jpg\n")
    (tmp_path / "q.txt").write_text("c.jpg\n")
    db2 = from_npz(tmp_path / "gt.npz", tmp_path / "db.txt", tmp_path / "q.txt", tmp_path)
    assert db2.pos_q(0).tolist() == [0] and db2.db_image(1) == tmp_path / "b.jpg"
    (tmp_path / "test" / "queries" / "bad.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"bad\.jpg: not a VG-format name"):
        from_vg_folder(tmp_path / "test")
