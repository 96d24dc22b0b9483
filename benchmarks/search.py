#!/usr/bin/env python
"""Search at scale: synthetic clustered descriptors in an hloc h5 (1,000,000 x 1024-D and 2,800,000 x
256-D, 1,000 queries near database images; ``--scale`` for smaller), searched four ways, each in its own
process so its peak RSS (VmHWM) is its own:

* whole: today's old path -- every descriptor read into one array, one IndexFlatL2, one search;
* chunked: ``search_index.ExactSearch`` streaming the h5 (``--max-memory``), the same results;
* IVF-PQ: ``build_index`` (``IVF<nlist>,PQ<D/16>``, nlist ~ 4 sqrt(N), trained on a sample, filled a chunk
  at a time), searched with nprobe 16, then 64 and 256;
* HNSW: ``HNSW32`` (all vectors in the graph), efSearch 128, then 512 and 2048.

Printed: peak RSS, build time, query time per 1,000 queries, recall@1/10 vs exact (the exact nearest
neighbour at rank 1 / within the first 10), and ratios to the physical limits: peak RSS over N*D*4 bytes,
and query time over one pass of N*D*4 bytes at the memory bandwidth measured with a numpy copy. Then, on raw
VLAD-like descriptors (K = 16 clusters x 64-D, K-fastest, every cluster intra-normalised),
IVF-PQ recall with and without the cluster-major reorder.

    python benchmarks/search.py [--scale 0.1] [--dir /tmp/search_bench] [--max-memory 2GB,hnsw=8GB] [--only 1024]
        [--methods chunked,hnsw] [--timeout whole=15,hnsw=60]

``--max-memory`` is the whole process's budget (what the process holds is measured), one for all or per
method: by default 2GB, and 8GB for HNSW, whose graph alone outgrows 2 GB (refused in one line there). A
method past its ``--timeout`` (minutes) is killed and reported as not finished, with the peak RSS
it had reached. The exact top 10 is kept in ``exact_ids.npy`` beside the data, so a later run of one method
still reports recall. The whole-RAM read opens one h5 dataset per image (50-75 us each here): its build time
is mostly that read, reported as it is.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
from common import in_fresh_process, proc_status_bytes

ROWS_PER_WRITE = 20_000
GENERATOR = 2  # bumped when the synthetic data change: an older set is written anew


def bandwidth_gbs(size: int = 2**30) -> float:
    """Memory bandwidth (GB/s) of a numpy copy: bytes read + written over the best of 3."""
    a = np.ones(size // 4, np.float32)
    b = np.empty_like(a)
    best = min(_timed(np.copyto, b, a) for _ in range(3))
    return 2 * a.nbytes / best / 1e9


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def place_centres(n: int, d: int, per_place: int = 100) -> np.ndarray:
    """``n / per_place`` places of a street-view-like database, each a centre of norm 1 on average."""
    return np.random.default_rng(1).normal(size=(max(1, n // per_place), d)).astype(np.float32) / np.sqrt(d)


def clustered(rng, n: int, centres: np.ndarray, spread: float = 0.6) -> np.ndarray:
    """``n`` images, each a random place's centre plus noise of norm ``spread``, L2-normalised."""
    d = centres.shape[1]
    x = centres[rng.integers(0, len(centres), n)]
    x += spread / np.sqrt(d) * rng.normal(size=x.shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vlad_like(rng, n: int, places: np.ndarray, k: int, d: int) -> np.ndarray:
    """Raw VLAD look-alikes, K-fastest: each cluster's residual is its place's plus noise, intra-normalised
    (so every one of the K blocks has norm 1, as intra-normalisation makes even a cluster with little
    assignment mass), then the whole L2-normalised."""
    v = places[rng.integers(0, len(places), n)]  # n x K x D
    v += 0.5 * rng.normal(size=v.shape).astype(np.float32)
    v /= np.linalg.norm(v, axis=2, keepdims=True) + 1e-12
    v = v.transpose(0, 2, 1).reshape(n, -1)  # n x D x K flattened: element k + K*d
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def write_set(folder: Path, n: int, n_q: int, make, seed: int, query_noise: float = 0.5) -> None:
    """db.h5 (n images) and q.h5 (n_q queries: database images plus noise of norm ``query_noise``, the
    images' own spread is 0.6) in hloc's layout, one ``global_descriptor`` dataset per image (hloc's
    ``image_size`` left out: nothing here reads it, and it doubles the writing time)."""
    import h5py

    from netvlad_port.feature_store import H5_WRITE

    done = folder / "done.json"
    if done.exists() and json.loads(done.read_text()).get("generator") == GENERATOR:
        return
    (folder / "exact_ids.npy").unlink(missing_ok=True)  # an older set's
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    q_src = np.sort(rng.choice(n, n_q, replace=False))
    queries = []
    with h5py.File(folder / "db.h5", "w", **H5_WRITE) as f:
        for start in range(0, n, ROWS_PER_WRITE):
            x = make(rng, min(ROWS_PER_WRITE, n - start))
            for i, v in enumerate(x):
                f[f"db/{start + i:08d}.jpg/global_descriptor"] = v
            mine = q_src[(q_src >= start) & (q_src < start + len(x))] - start
            noise = rng.normal(size=(len(mine), x.shape[1])).astype(np.float32)
            queries.append(x[mine] + query_noise / np.sqrt(x.shape[1]) * noise)
    q = np.concatenate(queries)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    with h5py.File(folder / "q.h5", "w", **H5_WRITE) as f:
        for i, v in enumerate(q):
            f[f"q/{i:05d}.jpg/global_descriptor"] = v
    done.write_text(json.dumps({"n": n, "queries": n_q, "generator": GENERATOR}))


def _names(folder: Path, kind: str) -> list[str]:
    from netvlad_port.feature_store import h5_names

    return sorted(h5_names(folder / f"{kind}.h5"))


def run_method(folder: str, method: str, factory: str, params: str, max_memory: str, k: int, vlad, cm, queue) -> None:
    """One method in a fresh process: (build s, query s, ids) and its own peak RSS."""
    import faiss

    from netvlad_port.feature_store import read_h5_descriptors
    from netvlad_port.search_index import ExactSearch, H5Descriptors, IndexSearch, build_index

    folder = Path(folder)
    q = read_h5_descriptors(folder / "q.h5", _names(folder, "q"))
    db = H5Descriptors(folder / "db.h5", _names(folder, "db"))
    more: list[str] = []  # an index's further search settings
    t0 = time.perf_counter()
    if method == "whole":  # as faiss_search did before: every row in one array, copied into one IndexFlatL2
        index = faiss.IndexFlatL2(db.dim)
        index.add(db.rows(np.arange(len(db))))  # read as the chunked search reads, so only memory differs
        build = time.perf_counter() - t0
        t1 = time.perf_counter()
        _, ids = index.search(q, k)
    elif method == "chunked":
        build = 0.0
        t1 = time.perf_counter()
        ids, _ = ExactSearch(db, max_memory=max_memory).search(q, k)
    else:
        index, info = build_index(db, factory, vlad=vlad, cluster_major=cm, max_memory=max_memory)
        build = time.perf_counter() - t0
        first, *more = params.split("|")  # one build, searched with each setting in turn
        t1 = time.perf_counter()
        ids, _ = IndexSearch(index, factory, params=first).search(q, k)
    query = time.perf_counter() - t1
    rss = peak_rss()
    sweep = []
    for alt in more:
        t2 = time.perf_counter()
        alt_ids, _ = IndexSearch(index, factory, params=alt).search(q, k)
        sweep.append({"params": alt, "query_s": time.perf_counter() - t2, "ids": np.asarray(alt_ids)[:, :10].tolist()})
    queue.put({"build_s": build, "query_s": query, "rss": rss, "ids": np.asarray(ids)[:, :10].tolist(), "sweep": sweep})


def peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM (ru_maxrss survives exec, so a spawned child would report its
    parent's peak if that were higher)."""
    return proc_status_bytes("self", "VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def recall(ids, exact) -> tuple[float, float]:
    ids, nn = np.asarray(ids), np.asarray(exact)[:, 0]
    return float((ids[:, 0] == nn).mean()), float((ids[:, :10] == nn[:, None]).any(1).mean())


def nlist_for(n: int) -> int:
    return int(2 ** round(np.log2(4 * np.sqrt(n))))


METHODS = ("whole", "chunked", "ivfpq", "hnsw")


def per_method(text: str | None, flag: str, convert=str) -> dict:
    """``--timeout`` / ``--max-memory``: one value for every method (``15``), and/or some per method
    (``2GB,hnsw=8GB``: the bare value for the others)."""
    given, rest = {}, None
    for part in filter(None, (text or "").split(",")):
        name, _, value = part.rpartition("=")
        if name and name not in METHODS:
            raise SystemExit(f"{flag} {text}: {name!r} is not one of {', '.join(METHODS)}")
        if name:
            given[name] = convert(value)
        else:
            rest = convert(value)
    return {m: given.get(m, rest) for m in METHODS if m in given or rest is not None}


def stamp(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def exact_ids(folder: Path, max_memory: str, timeouts: dict) -> tuple[list | None, dict | None]:
    """The exact top 10 (chunked search), kept in ``exact_ids.npy`` beside the data for later runs; also the
    chunked run's own result when it ran here."""
    cache = folder / "exact_ids.npy"
    if cache.exists():
        return np.load(cache).tolist(), None
    stamp(f"chunked (exact) on {folder.name}")
    r = in_fresh_process(run_method, str(folder), "chunked", "Flat", "", max_memory, 10, None, None,
                         timeout_s=timeouts.get("chunked"))  # fmt: skip
    if "ids" not in r:
        return None, r
    tmp = folder / "exact_ids.tmp.npy"
    np.save(tmp, np.asarray(r["ids"], np.int64))
    tmp.replace(cache)
    return r["ids"], r


def unfinished(r: dict) -> str | None:
    if "timeout_s" in r:
        return f"did not finish in {r['timeout_s'] / 60:g} min"
    if "failed" in r:
        return f"died (exit code {r['failed']})"
    return None


def bench(folder: Path, n: int, d: int, n_q: int, memory: dict, bw: float, methods: list[str],
          timeouts: dict) -> None:  # fmt: skip
    nlist = nlist_for(n)
    setups = {"whole": ("whole", "Flat", ""), "chunked": ("chunked", "Flat", ""),
              "ivfpq": ("IVF-PQ", f"IVF{nlist},PQ{d // 16}", "nprobe=16|nprobe=64|nprobe=256"),
              "hnsw": ("HNSW", "HNSW32", "efSearch=128|efSearch=512|efSearch=2048")}  # fmt: skip
    flat_bytes = n * d * 4
    one_pass = flat_bytes / (bw * 1e9)
    budgets = ", ".join(f"{m} {memory.get(m) or 'default'}" for m in methods if m != "whole")
    print(f"\n{n:,} x {d}-D, {n_q} queries, max-memory: {budgets} (flat data {flat_bytes / 1e9:.2f} GB)")
    exact, chunked = exact_ids(folder, memory.get("chunked"), timeouts) if methods else (None, None)
    rows = []
    for m in [m for m in ("chunked", "whole", "ivfpq", "hnsw") if m in methods]:
        name, factory, params = setups[m]
        if m == "chunked" and chunked is not None:
            r = chunked
        else:
            stamp(f"{m} on {folder.name}")
            method = m if m in ("whole", "chunked") else "index"
            r = in_fresh_process(run_method, str(folder), method, factory, params, memory.get(m), 10, None, None,
                                 timeout_s=timeouts.get(m))  # fmt: skip
        label = name if m in ("whole", "chunked") else f"{name} {factory} {params.split('|')[0]}"
        rss = f"{r['rss'] / 1e9:>8.2f}GB{r['rss'] / flat_bytes:>11.2f}" if r.get("rss") else f"{'-':>10}{'-':>11}"
        why, main_row = unfinished(r), len(rows)
        if why:
            rows.append(f"{label:<38}{rss}  {why}")
        else:
            r1, r10 = recall(r["ids"], exact) if exact is not None else (float("nan"),) * 2
            rows.append(f"{label:<38}{rss}{r['build_s']:>9.1f}{r['query_s'] * 1000 / n_q:>12.2f}"
                        f"{r['query_s'] / one_pass:>11.1f}{r1:>7.3f}{r10:>7.3f}")  # fmt: skip
            if m == "whole" and exact is not None and r["ids"] != exact:
                rows[-1] += "  ! differs from chunked"
            for alt in r.get("sweep", ()):  # the same index searched with another setting: no build, same RSS
                r1, r10 = recall(alt["ids"], exact) if exact is not None else (float("nan"),) * 2
                rows.append(f"{'  ' + alt['params']:<38}{'':>10}{'':>11}{'':>9}{alt['query_s'] * 1000 / n_q:>12.2f}"
                            f"{alt['query_s'] / one_pass:>11.1f}{r1:>7.3f}{r10:>7.3f}")  # fmt: skip
        stamp(f"{m} done: {rows[main_row].strip()}")
    print(f"{'method':<38}{'peak RSS':>10}{'RSS/NxDx4':>11}{'build s':>9}{'query s/1k':>12}{'x one pass':>11}"
          f"{'R@1':>7}{'R@10':>7}")  # fmt: skip
    print("\n".join(rows), flush=True)


def bench_vlad(folder: Path, n: int, n_q: int, max_memory: str, timeouts: dict) -> None:
    k, d = 16, 64
    nlist = nlist_for(n)
    print(
        f"\nraw VLAD-like {n:,} x {k * d}-D (K={k}, D={d}, K-fastest), IVF{nlist},PQ16 nprobe 16: cluster-major or not"
    )
    exact, chunked = exact_ids(folder, max_memory, timeouts)
    for cm in (False, True):
        stamp(f"IVF-PQ cluster-major {cm} on {folder.name}")
        r = in_fresh_process(run_method, str(folder), "index", f"IVF{nlist},PQ16", "nprobe=16", max_memory, 10,
                             (k, d), cm, timeout_s=timeouts.get("ivfpq"))  # fmt: skip
        why = unfinished(r) or (exact is None and "no exact results")
        if why:
            print(f"  cluster-major {str(cm):<6} {why}", flush=True)
            continue
        r1, r10 = recall(r["ids"], exact)
        print(f"  cluster-major {str(cm):<6} R@1 {r1:.3f}  R@10 {r10:.3f}  build {r['build_s']:.1f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="Fraction of the database sizes (queries stay 1,000).")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/netvlad_search_bench"))
    ap.add_argument("--max-memory", default="2GB,hnsw=8GB", help="--max-memory of the chunked search and the "
                    "index builds, or per method (an HNSW graph of 1M x 1024-D is ~4.4 GB itself)")  # fmt: skip
    ap.add_argument("--only", default="1024,256,vlad", help="Which sets: 1024, 256, vlad.")
    ap.add_argument("--methods", default=",".join(METHODS), help="Which of whole, chunked, ivfpq, hnsw to run "
                    "(recall needs the exact results: chunked, run now or kept from an earlier run).")  # fmt: skip
    ap.add_argument("--timeout", default=None, help="Minutes a method may run (15), or per method (whole=15,hnsw=60); "
                    "one past it is reported as not finished, with the peak RSS it had reached.")  # fmt: skip
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if any(m not in METHODS for m in methods):
        raise SystemExit(f"--methods {args.methods}: expected some of {', '.join(METHODS)}")
    timeouts = per_method(args.timeout, "--timeout", lambda v: float(v) * 60)
    memory = per_method(args.max_memory, "--max-memory")
    bw = bandwidth_gbs()
    print(
        f"memory bandwidth (numpy copy, read + write): {bw:.1f} GB/s; scale {args.scale}; {time.strftime('%F %T %Z')}"
    )
    sets = {"1024": (1_000_000, 1024), "256": (2_800_000, 256)}
    for key in args.only.split(","):
        if key == "vlad":
            n = max(2000, int(200_000 * args.scale))
            places = np.random.default_rng(5).normal(size=(2000, 16, 64)).astype(np.float32)
            folder = args.dir / f"vlad_{n}"
            write_set(folder, n, args.queries, lambda rng, m, p=places: vlad_like(rng, m, p, 16, 64), 2)
            bench_vlad(folder, n, args.queries, memory.get("ivfpq"), timeouts)
            continue
        n, d = sets[key]
        n = max(2000, int(n * args.scale))
        folder = args.dir / f"{key}_{n}"
        t = time.perf_counter()
        centres = place_centres(n, d)
        write_set(folder, n, args.queries, lambda rng, m, c=centres: clustered(rng, m, c), 0)
        print(f"(data in {folder}: {time.perf_counter() - t:.0f} s)")
        bench(folder, n, d, args.queries, memory, bw, methods, timeouts)


if __name__ == "__main__":
    main()
