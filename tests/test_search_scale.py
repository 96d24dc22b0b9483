"""Search at scale (issue 23): the chunked exact search equals one IndexFlatL2 over the whole set, ties
included; faiss indexes are built, saved, reused and refused on other descriptors; `test --index` reports
exact recall on a sample beside the approximate one; the cluster-major reorder of raw VLAD."""

import json
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from netvlad_port import retrieval
from netvlad_port.cli import main
from netvlad_port.datasets import DbBase
from netvlad_port.errors import NetVladPortError
from netvlad_port.memory_budget import WORKSPACE, parse_memory, process_rss, release_freed, reset_peak
from netvlad_port.search_index import (
    FAISS_BLOCK,
    ExactSearch,
    H5Descriptors,
    IndexSearch,
    build_index,
    chunk_rows,
    cluster_major_permutation,
    vlad_layout,
)

from helpers import E0, N0, spec_fields


def whole_set(x, q, k):
    """Today's search: one IndexFlatL2 over everything, then ordered by (distance, id)."""
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    ds, ids = index.search(q, min(k, len(x)))
    order = np.lexsort((ids, ds), axis=1)
    return np.take_along_axis(ids, order, 1), np.take_along_axis(ds, order, 1)


def with_duplicates(n=3000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[100:160] = x[0]  # 61 copies of one descriptor: ties straddle k = 1, 10, 50 and 100
    x[2000:2100] = x[0]
    x[n - 5 :] = x[7]
    q = np.concatenate([x[:1], x[7:8], rng.normal(size=(25, d)).astype(np.float32)])
    return x, q


def write_h5(path, x, tag=None, prefix="im"):
    with h5py.File(path, "w") as f:
        if tag is not None:
            f.attrs["netvlad_port"] = json.dumps(tag)
        for i, v in enumerate(x):
            g = f.create_group(f"{prefix}/{i:05d}.jpg")
            g["global_descriptor"] = v
            g["image_size"] = np.array([64, 48])
    return [f"{prefix}/{i:05d}.jpg" for i in range(len(x))]


@pytest.mark.parametrize("k", [1, 10, 100, 150])
def test_chunked_equals_whole_set_with_ties(k):
    x, q = with_duplicates()
    ids, ds = whole_set(x, q, k)
    assert (ds[:2, :1] == 0).all() and ids[0, 0] == 0 and (k == 1 or ids[0, 1] == 100)  # copies tie: lower index first
    for chunk in (1, 37, 1000, 1024, 2999, 3000, None):
        c_ids, c_ds = ExactSearch(x, chunk_size=chunk).search(q, k)
        assert np.array_equal(c_ids, ids) and np.array_equal(c_ds, ds), chunk


def test_chunked_from_h5_equals_array_and_max_memory_bounds_the_chunk(tmp_path):
    x, q = with_duplicates(1500, 16)
    names = write_h5(tmp_path / "db.h5", x)
    db = H5Descriptors(tmp_path / "db.h5", names)
    assert len(db) == 1500 and db.dim == 16 and np.array_equal(db.rows([3, 0, 1499]), x[[3, 0, 1499]])
    ids, ds = whole_set(x, q, 20)
    for memory in (process_rss() + WORKSPACE + 300_000, "40GB"):  # 3,072 rows a chunk; all at once
        c_ids, c_ds = ExactSearch(db, max_memory=str(memory)).search(q, 20)
        assert np.array_equal(c_ids, ids) and np.array_equal(c_ds, ds)
    assert parse_memory("512MiB") == 2**29 and parse_memory("1.5g") == 1_500_000_000


def test_max_memory_is_the_whole_process_budget():
    # 1 GB less 500 MB held, 1000 x 10 results (100 bytes each) and the workspace, over 1024 x 4 + 8 bytes
    # a row: 105,236 rows, 102 whole faiss blocks
    assert chunk_rows(1024, 1000, 10, "1GB", in_use=500_000_000) == 102 * FAISS_BLOCK
    assert chunk_rows(1024, 1000, 10, "1GB", in_use=900_000_000) == 7 * FAISS_BLOCK  # 7,770 rows left
    assert chunk_rows(16, 0, 0, str(WORKSPACE + 10 + 720), in_use=10) == 10  # under one block: as they come
    # no --max-memory: 2 GB for chunks beyond what the process holds, never refused (2e9 - 1,000,000 - 64 MiB
    # over 4,104 bytes: 470,733 rows, 459 blocks)
    assert chunk_rows(1024, 1000, 10, None, in_use=5_000_000_000) == 459 * FAISS_BLOCK
    with pytest.raises(NetVladPortError, match=r"--max-memory 1GB: too small, this process already holds 1\.10 GB"):
        chunk_rows(1024, 1000, 10, "1GB", in_use=1_100_000_000)


def test_the_chunks_shrink_with_the_budget_and_a_budget_below_the_process_is_refused(tmp_path):
    x, q = with_duplicates(3000, 16)
    db = H5Descriptors(tmp_path / "db.h5", write_h5(tmp_path / "db.h5", x))
    seen = []
    read = db._read
    db._read = lambda ids: seen.append(len(ids)) or read(ids)
    ids, ds = whole_set(x, q, 10)
    largest = []
    for spare in (400_000, 150_000):  # bytes beyond what the process holds and the workspace
        seen.clear()
        c_ids, c_ds = ExactSearch(db, max_memory=str(process_rss() + WORKSPACE + spare)).search(q, 10)
        assert np.array_equal(c_ids, ids) and np.array_equal(c_ds, ds)
        largest.append(max(seen))
        assert sum(seen) == 3000 and largest[-1] * (16 * 4 + 8) <= spare
    assert largest[1] < largest[0] and largest[1] >= 1024  # faiss blocks still
    with pytest.raises(NetVladPortError, match="too small, this process already holds"):
        ExactSearch(db, max_memory=str(process_rss() // 2)).search(q, 10)


BUILD_IN_BUDGET = """
import json, sys
import numpy as np
from netvlad_port.memory_budget import WORKSPACE, peak_since_reset, process_rss, reset_peak
from netvlad_port.search_index import H5Descriptors, build_index
path, n, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) or None
db = H5Descriptors(path, [f"im/{i:05d}.jpg" for i in range(n)])
start = process_rss()
budget = start + WORKSPACE + 120_000_000
reset_peak()
index, _ = build_index(db, "IVF256,PQ32", train_size=n, max_memory=str(budget), chunk_size=chunk)
peak = peak_since_reset()
q = db.rows(np.arange(50))
print(json.dumps({"peak": peak, "budget": budget, "ids": index.search(q, 10)[1].tolist()}))
"""


@pytest.mark.skipif(not reset_peak(), reason="needs /proc/self/clear_refs (Linux) to measure a peak")
def test_index_build_keeps_the_process_within_max_memory(tmp_path):
    """IVF-PQ's adding holds residuals, coarse distances and M x 256-float encoding tables for every row
    it is given: 30,000 rows added in one go take ~300 MB beyond a fresh process, past a budget of 120 MB
    (+ the workspace) beyond it; the measured chunks keep the peak within that budget and build the same
    index. An index larger than the budget is refused in one line."""
    import subprocess
    import sys

    x = np.random.default_rng(0).normal(size=(30_000, 256)).astype(np.float32)
    path = tmp_path / "db.h5"
    write_h5(path, x)

    def build(chunk: int) -> dict:
        cmd = [sys.executable, "-c", BUILD_IN_BUDGET, str(path), str(len(x)), str(chunk)]
        root = Path(__file__).resolve().parents[1]  # this checkout's package, as the test process imports it
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=root).stdout)

    one_go, chunked = build(len(x)), build(0)
    assert one_go["peak"] > one_go["budget"]  # the budget binds: what the fixed chunk of before did
    assert chunked["peak"] <= chunked["budget"] and chunked["ids"] == one_go["ids"]
    db = H5Descriptors(path, [f"im/{i:05d}.jpg" for i in range(len(x))])
    with pytest.raises(NetVladPortError, match=r"index IVF64,Flat: faiss cannot train it on 10 rows: .*64"):
        build_index(db, "IVF64,Flat", train_size=10)
    # a flat storage is sized once to its final length (no doubling copy): the same vectors, the same results
    release_freed()
    flat, _ = build_index(db, "Flat", max_memory=str(process_rss() + WORKSPACE + 150_000_000))
    assert flat.ntotal == len(x) and np.array_equal(flat.search(x[:20], 5)[1], whole_set(x, x[:20], 5)[0])
    with pytest.raises(
        NetVladPortError, match=r"--max-memory \d+: too small for a HNSW32 index of 30000 rows.*give at"
    ):
        release_freed()  # what this long-lived process freed and kept is not room the build can count on
        build_index(db, "HNSW32", max_memory=str(process_rss() + WORKSPACE + 5_000_000))


class GroupedDb(DbBase):
    """Two 'cities' of the same positions, searched apart."""

    def search_groups(self):
        n, m = self.num_images, self.num_queries
        return np.arange(n) % 2, np.arange(m) % 2


def test_per_group_search_chunked_equals_whole_group_and_dim_crop():
    rng = np.random.default_rng(1)
    utm_db = np.stack([E0 + rng.uniform(0, 300, 400), N0 + rng.uniform(0, 300, 400)])
    utm_q = np.stack([E0 + rng.uniform(0, 300, 30), N0 + rng.uniform(0, 300, 30)])
    db = GroupedDb("g", ".", ".", spec_fields(utm_db, utm_q))
    x, _ = with_duplicates(400, 16, seed=2)
    q = x[rng.integers(0, 400, 30)] + 0.01
    ref, ref_ranks = retrieval.test_from_fn(db, x, q, [1, 5, 10], return_ranks=True, chunk_size=10**6)
    for chunk in (1, 7, 64):
        res, ranks = retrieval.test_from_fn(db, x, q, [1, 5, 10], return_ranks=True, chunk_size=chunk)
        assert res.search.endswith("per group") and res.recalls == ref.recalls
        assert all(np.array_equal(a, b) for a, b in zip(ranks, ref_ranks))
    for iq, r in enumerate(ref_ranks):  # each query's results: its group only, as IndexFlatL2 on the group
        members = np.flatnonzero(np.arange(400) % 2 == iq % 2)
        ids, _ = whole_set(x[members], q[iq : iq + 1], 100)
        assert np.array_equal(r, members[ids[0]][: len(r)])
    cropped = retrieval.test_from_fn(db, x, q, [1, 5], dim=8, chunk_size=13)
    assert cropped.dim == 8 and cropped.recalls == retrieval.test_from_fn(db, x, q, [1, 5], dim=8).recalls


def test_index_search_within_groups_returns_members_only():
    x, q = with_duplicates(2000, 16)
    index, info = build_index(x, "HNSW16")
    assert info["train_size"] == 0 and not info["cluster_major"]
    members = np.arange(5, 2000, 3)
    ids, ds = IndexSearch(index, "HNSW16").search(q, 10, members)
    assert np.isin(ids, members).all() and (np.diff(ds, axis=1) >= 0).all()
    ivf, _ = build_index(x, "IVF8,Flat", train_size=2000)
    ids, _ = IndexSearch(ivf, "IVF8,Flat", params="nprobe=8").search(q, 10, members)
    exact, _ = ExactSearch(x).search(q, 10, members)
    assert np.isin(ids, members).all() and np.array_equal(ids[:, 0], exact[:, 0])  # all lists probed: exact


def test_cluster_major_is_a_permutation_that_keeps_distances():
    k, d = 4, 6
    perm = cluster_major_permutation(k, d)
    assert sorted(perm.tolist()) == list(range(k * d))
    vlad = np.arange(k * d).reshape(1, d, k)  # MATLAB's K-fastest: element k + K*d is cluster k, dim d
    flat = vlad.reshape(1, -1)
    assert np.array_equal(flat[:, perm].reshape(k, d), vlad[0].T)  # cluster-major: cluster 0's D dims first
    rng = np.random.default_rng(0)
    x, q = rng.normal(size=(300, k * d)).astype(np.float32), rng.normal(size=(9, k * d)).astype(np.float32)
    ids, ds = whole_set(x, q, 20)
    p_ids, p_ds = whole_set(np.ascontiguousarray(x[:, perm]), np.ascontiguousarray(q[:, perm]), 20)
    assert np.array_equal(ids, p_ids) and np.allclose(ds, p_ds, rtol=1e-5)
    # inside an index: a transform of the index, the queries are given as they are
    index, info = build_index(x, "Flat", vlad=(k, d), cluster_major=True)
    assert info["cluster_major"]
    f_ds, f_ids = index.search(q, 20)
    assert np.array_equal(f_ids, ids) and np.allclose(f_ds, ds, rtol=1e-5)
    assert not build_index(x, "IVF4,Flat", vlad=(k, d))[1]["cluster_major"]  # default: only before PQ
    assert build_index(x, "PQ4x4", vlad=(k, d))[1]["cluster_major"]


def test_vlad_layout_knows_raw_vlad(tiny_world, small_spec):
    from netvlad_port.model import SimpleNN

    assert vlad_layout(SimpleNN(tiny_world.spec)) == (4, 32)  # K = 4, D = 32: 128-D, no WPCA
    assert vlad_layout(SimpleNN(small_spec)) is None  # whitened


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res


def test_index_build_save_reuse_and_tag_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 64)).astype(np.float32)
    q = x[:40] + 0.05 * rng.normal(size=(40, 64)).astype(np.float32)
    tag = {"model_sha256": "a" * 64, "dim": None}
    write_h5(tmp_path / "db.h5", x, tag)
    write_h5(tmp_path / "q.h5", q, tag, prefix="q")
    write_h5(tmp_path / "other.h5", x, {"model_sha256": "b" * 64, "dim": None})
    res = run("index", tmp_path / "db.h5", "-o", tmp_path / "db.faiss", "--factory", "IVF16,PQ8x4", "--vlad-k", "8",
              "--chunk-size", "500", "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    side = json.loads((tmp_path / "db.faiss.json").read_text())
    assert side["features"] == tag and side["cluster_major"] and side["names"][0] == "im/00000.jpg"
    assert side["count"] == 1200 and side["factory"] == "IVF16,PQ8x4"
    assert faiss.read_index(str(tmp_path / "db.faiss")).ntotal == 1200
    exact = run("search", "--db", tmp_path / "db.h5", "--queries", tmp_path / "q.h5", "-k", "3", "-o",
                tmp_path / "exact.txt", "--chunk-size", "100")  # fmt: skip
    approx = run("search", "--db", tmp_path / "db.h5", "--queries", tmp_path / "q.h5", "-k", "3", "-o",
                 tmp_path / "approx.txt", "--index", tmp_path / "db.faiss", "--index-params", "nprobe=16")  # fmt: skip
    assert exact.exit_code == 0 and approx.exit_code == 0, exact.output + approx.output
    assert "IVF16,PQ8x4 cluster-major from db.faiss" in approx.output
    firsts = [line.split() for line in (tmp_path / "approx.txt").read_text().splitlines()[::3]]
    assert sum(d == f"im/{int(qn[2:7]):05d}.jpg" for qn, d in firsts) >= 36  # PQ finds the true neighbour
    again = run("index", tmp_path / "db.h5", "-o", tmp_path / "db.faiss", "--factory", "HNSW8")
    assert again.exit_code == 1 and "--force" in again.output
    other = run("search", "--db", tmp_path / "other.h5", "--queries", tmp_path / "other.h5", "-k", "3", "-o",
                tmp_path / "x.txt", "--index", tmp_path / "db.faiss")  # fmt: skip
    assert other.exit_code == 1 and "another model" in other.output and len(other.output.strip().splitlines()) == 1
    bads = [(["--index", "IVFx"], "could not parse"), (["--index", tmp_path / "none.faiss"], "no such"),
            (["--max-memory", "2XB"], "expected a size"), (["--max-memory", "1kB"], "too small")]  # fmt: skip
    for bad, said in bads:
        res = run("search", "--db", tmp_path / "db.h5", "--queries", tmp_path / "q.h5", "-o", tmp_path / "y.txt", *bad)
        assert res.exit_code == 1 and said in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_test_with_an_index_reports_exact_recall_on_a_sample(tmp_path, tiny_world):
    out = tmp_path / "eval"
    base = ["test", tiny_world.net, "--dataset", "synthetic-test", "--root", tiny_world.data, "--out", out, "--quiet"]
    exact = run(*base, "--chunk-size", "7")
    assert exact.exit_code == 0, exact.output
    exact_json = json.loads((out / "results.json").read_text())
    assert exact_json["index"] is None and exact_json["exact_sample"] is None
    built = run(*base, "--index", "IVF2,PQ4x4", "--index-params", "nprobe=2", "--exact-sample", "10")
    assert built.exit_code == 0, built.output
    res = json.loads((out / "results.json").read_text())
    assert "IVF2,PQ4x4 cluster-major, built here" in res["search"] and res["index"]["index"] == "IVF2,PQ4x4"
    sample = res["exact_sample"]
    assert sample["num_queries"] == 10 and set(sample["recall_at_n"]) == set(sample["approximate_recall_at_n"])
    assert "exact on 10 sampled queries" in built.output
    # the index command on test's own db.h5, reused by test --index FILE; all queries when fewer than asked
    made = run("index", out / "db.h5", "-o", tmp_path / "db.faiss", "--factory", "IVF2,Flat", "--model", tiny_world.net)
    assert made.exit_code == 0, made.output
    reused = run(*base, "--index", tmp_path / "db.faiss", "--index-params", "nprobe=2")
    assert reused.exit_code == 0, reused.output
    res = json.loads((out / "results.json").read_text())
    assert res["exact_sample"]["num_queries"] == 24 and "from db.faiss" in res["search"]
    assert res["recalls"] == exact_json["recalls"]  # every list probed: the exact ranking
    assert res["exact_sample"]["recall_at_n"] == exact_json["recall_at_n"]
    side = json.loads((tmp_path / "db.faiss.json").read_text())
    side["features"]["model_sha256"] = "0" * 64
    (tmp_path / "db.faiss.json").write_text(json.dumps(side))
    refused = run(*base, "--index", tmp_path / "db.faiss")
    assert refused.exit_code == 1 and "another model" in refused.output
