"""Tables, JSONL, journals and archives are byte-identical to those recorded before the engine moved out of
``runtime/field`` (``tests/fixtures/engine_results.json``, written by ``record_engine_fixtures.py`` on 6b12a55), for
one process, ``--workers 2``, ``--shard`` + ``merge``, a local Ray and ``stream --embeddings``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
_spec = importlib.util.spec_from_file_location("record_engine_fixtures", FIXTURES / "record_engine_fixtures.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)
RECORDED = json.loads(record.RESULTS.read_text())


def test_the_fixture_graph_is_the_recorded_one():
    assert record._sha(record.GRAPH.read_bytes()) == RECORDED["graph_sha256"]


@pytest.mark.parametrize("kind,name", record.all_variants(), ids=[f"{k}-{n}" for k, n in record.all_variants()])
def test_same_results_as_recorded(kind, name, tmp_path, request):
    if name == "ray":
        request.getfixturevalue("ray_cluster")  # one local Ray (2 CPUs) for the session
    found = record.run(kind, name, tmp_path, record.cli_invoker())
    expected = RECORDED["runs"][f"{kind}/{name}"]
    assert sorted(found) == sorted(expected)
    changed = sorted(k for k in expected if found[k] != expected[k])
    assert not changed, f"{kind} {name}: differs from the recorded run in {changed}"
