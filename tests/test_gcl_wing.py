"""The GCL wing as a plug-in (netvlad_port/plugins/gcl/): the core's registries list its protocol, label
kind, dataset and layout; the core never imports it; MSLS cities keep their own coordinates and ground truth."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from netvlad_port.errors import NetVladPortError


def test_protocol_registry_lists_gcl_and_names_the_valid_ones():
    from netvlad_port.datasets import DbBase
    from netvlad_port.retrieval import PROTOCOLS, RECALL_NS, test_from_fn

    from helpers import line, spec_fields

    assert {"matlab", "gcl"} <= set(PROTOCOLS)
    assert PROTOCOLS["gcl"].results.__module__ == "netvlad_port.plugins.gcl.protocol"
    with pytest.raises(NetVladPortError, match=r"unknown protocol 'nope': expected one of .*matlab.*gcl") as err:
        PROTOCOLS["nope"]
    assert "\n" not in str(err.value)
    db = DbBase("t", ".", ".", spec_fields(line(0, 10, 50), line(0, 48)))
    assert PROTOCOLS["matlab"].recall_ns(db) == RECALL_NS
    assert PROTOCOLS["gcl"].recall_ns(db) == (1, 2, 3, 4, 5, 10, 15, 20, 25)
    feats = np.eye(3, dtype=np.float32)
    with pytest.raises(NetVladPortError, match="unknown protocol"):
        test_from_fn(db, feats, feats[:2], [1], protocol="nope")
    res = test_from_fn(db, feats, feats[:2], [1, 2], protocol="GCL")  # names are case-insensitive
    assert res.protocol == "gcl" and res.num_queries == 2 and res.maps is not None


def test_cli_choices_come_from_the_registries(tmp_path):
    from netvlad_port.cli import main

    res = CliRunner().invoke(main, ["test", str(tmp_path / "m"), "--dataset", "synthetic-test", "--protocol", "x"])
    assert res.exit_code == 2 and "matlab" in res.output and "gcl" in res.output
    res = CliRunner().invoke(main, ["make-synthetic", str(tmp_path / "s"), "--layout", "x"])
    assert res.exit_code == 2 and "dbstruct" in res.output and "msls" in res.output


def test_graded_labels_come_from_the_wing():
    from netvlad_port.datasets import DbBase
    from netvlad_port.datasets.labels import LABELS
    from netvlad_port.plugins.gcl import labels

    from helpers import line, spec_fields

    assert LABELS["graded"] is labels.graded and LABELS["binary"].__module__ == "netvlad_port.datasets.labels"
    db = DbBase("t", ".", ".", spec_fields(line(0, 10, 24, 40), line(0)))
    assert db.similarity(0, [0, 1, 2, 3]).tolist() == [1, 1, 1, 0]  # binary: the core's default
    assert np.allclose(db.similarity(0, [0, 1, 2, 3], "graded"), labels.distance_similarity([0, 10, 24, 40]))
    with pytest.raises(NetVladPortError, match=r"unknown label kind 'fuzzy': expected one of .*binary.*graded"):
        db.similarity(0, [0], "fuzzy")


def test_layout_registry_has_the_wing_layout():
    from netvlad_port.datasets.synthetic import LAYOUTS, make_synthetic

    assert LAYOUTS["msls"].write.__module__ == "netvlad_port.plugins.gcl.msls" and "dbstruct" in LAYOUTS
    with pytest.raises(NetVladPortError, match="unknown synthetic layout 'x': expected one of dbstruct"):
        make_synthetic("unused", layout="x")


def test_the_core_does_not_import_the_wing():
    code = (
        "import sys, netvlad_port.retrieval, netvlad_port.datasets, netvlad_port.evaluate\n"
        "print(sorted(m for m in sys.modules if m.startswith('netvlad_port.plugins.gcl')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cities_with_the_same_coordinates_stay_apart(tmp_path):
    """Two cities on the same UTM coordinates: no positive, training positive, negative, label or
    retrieval result crosses from one to the other."""
    from netvlad_port.plugins.gcl.msls import DbMsls, write_msls_city
    from netvlad_port.retrieval import test_from_fn

    east_north = [(500000.0 + 5 * i, 4000000.0) for i in range(8)]
    for city in ("cph", "sf"):
        write_msls_city(tmp_path, city, "database", [f"{city}d{i}" for i in range(8)], east_north, [0.0] * 8, [0] * 8)
        write_msls_city(tmp_path, city, "query", [f"{city}q{i}" for i in range(2)], east_north[1:6:4], [0.0] * 2,
                        [0] * 2)  # fmt: skip
    db = DbMsls(tmp_path, "val")
    assert np.array_equal(db.utm_db[:, :8], db.utm_db[:, 8:])  # the csv's positions, not shifted
    for iq in range(db.num_queries):
        mine = set(np.flatnonzero(db.db_city == db.q_city[iq]).tolist())
        assert len(db.pos_q(iq)) and set(db.pos_q(iq).tolist()) <= mine
        assert len(db.nontrivial_pos_q(iq)) and set(db.nontrivial_pos_q(iq).tolist()) <= mine
        assert set(db.sample_negs_q(iq, 20, np.random.default_rng(iq)).tolist()) <= mine
        others = np.array(sorted(set(range(db.num_images)) - mine))
        assert not db.similarity(iq, others, "graded").any() and not db.is_pos_q(iq, others).any()
    same = np.zeros((db.num_images, 4), np.float32)  # every database image equally near every query
    res, ranks = test_from_fn(db, same, same[: db.num_queries], [1, 8], return_ranks=True)
    assert all(set(r.tolist()) == set(np.flatnonzero(db.db_city == db.q_city[iq]).tolist())
               for iq, r in enumerate(ranks))  # fmt: skip
    assert res.search.endswith("per group") and res.recall(8) == 1.0
