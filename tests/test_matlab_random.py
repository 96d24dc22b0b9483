"""MatlabRandom against MATLAB's documented outputs and, call by call, against every random draw of
the reference run of trainGaussKernalInd and getClusters (tests/data/trajectory)."""

import re
from pathlib import Path

import numpy as np
import pytest

from netvlad_port.matlab_random import MatlabRandom

LOGS = Path(__file__).parent / "data" / "trajectory" / "gauss_ind_tiny" / "logs"


def test_documented_matlab_values():
    r = MatlabRandom()  # rng default
    assert np.round(r.rand(1, 5), 4).tolist() == [[0.8147, 0.9058, 0.1270, 0.9134, 0.6324]]
    assert MatlabRandom(0).randperm(8).tolist() == [6, 3, 7, 8, 5, 1, 2, 4]
    assert MatlabRandom(0).randi(10, 1, 5).tolist() == [[9, 10, 2, 10, 7]]
    assert MatlabRandom(0).randperm(6).tolist() == [6, 3, 5, 1, 2, 4]  # RandStream('mt19937ar','Seed',0)
    assert MatlabRandom(0).rand(1, 1)[0, 0] == MatlabRandom(5489).rand(1, 1)[0, 0]


def test_rand_fills_column_major_and_state_round_trips():
    a = MatlabRandom(7).rand(3, 4)
    flat = MatlabRandom(7).rand(1, 12).ravel()
    assert np.array_equal(a, flat.reshape(3, 4, order="F")) and MatlabRandom(7).rand(2).shape == (2, 2)
    r = MatlabRandom(3)
    r.rand(1, 10)
    state = r.get_state()
    x = r.randsample(60, 13)
    r.set_state(state)
    assert np.array_equal(r.randsample(60, 13), x)


def test_randsample_branches():
    r = MatlabRandom(1)
    # 4k > n: the first k of randperm(n)
    assert np.array_equal(r.randsample(10, 3), MatlabRandom(1).randperm(10)[:3])
    # 4k <= n: rejection sampling, k distinct values
    for n, k in ((60, 13), (1000, 3), (60, 5)):
        s = MatlabRandom(2).randsample(n, k)
        assert len(set(s.tolist())) == k and s.min() >= 1 and s.max() <= n
    pop = np.arange(100, 140)
    assert set(MatlabRandom(4).randsample(pop, 5).tolist()) <= set(pop.tolist())
    with pytest.raises(ValueError):
        r.randsample(5, 6)


def _replay(log: Path) -> tuple[int, int]:
    """Replay a reference log line by line; returns (calls checked by value, calls checked by their
    number of draws only: samples of a population vector the log does not hold)."""
    rng, by_value, by_count = None, 0, 0
    for line in log.read_text().splitlines():
        _, call, _, draws, _, values = line.split("\t")
        name, args = re.match(r"(\w+)\((.*)\)", call).groups()
        if name == "rng":
            rng = MatlabRandom(int(args)) if args.isdigit() else None  # a restore: reseeded before any draw
            continue
        assert rng is not None, line
        if name == "randsample" and args.startswith("<"):
            m, k = re.match(r"<double \[(\d+) 1\]>,(\d+)", args).groups()
            rng.randsample(int(m), int(k))  # randsample(values, k) = values(randsample(numel, k))
            by_count += 1
        elif name in ("randsample", "randperm"):
            got = getattr(rng, name)(*(int(a) for a in args.split(",")))
            assert got.tolist() == [int(v) for v in values.split()], line
            by_value += 1
        else:
            continue  # k-means' own seeding (lloyd) is not MATLAB's
        assert rng.draws == int(draws.split("=")[1]), line
    return by_value, by_count


def test_every_draw_of_the_reference_training_run():
    by_value, by_count = _replay(LOGS / "rng_train.tsv")  # 3 query orders, 487 randsample calls
    assert by_value == 345 and by_count == 145


def test_every_draw_of_the_reference_get_clusters():
    by_value, _ = _replay(LOGS / "rng_clusters.tsv")  # images, 60 x descriptors, k-means' initial sample
    assert by_value == 62
