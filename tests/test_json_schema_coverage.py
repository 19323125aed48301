"""JSONSchemaBench-style coverage (benchmarks/json_schema_coverage.py): the committed report covers the whole
vendored sample, shows no false accept, and stays true: a fixed subset of its fast schemas is compiled again
and must give the same result (and refusal category), with random texts that validate under `jsonschema`.

Refresh the report after a deliberate change: `python -m benchmarks.json_schema_coverage --write`.
"""
from __future__ import annotations

import json

import pytest

from benchmarks.json_schema_coverage import COUNT, DATA, RESULT, run, schemas, totals

SUBSET = 12  # schemas compiled again here
FAST_S = 2.0  # ... among those the committed run took at most this long for


@pytest.fixture(scope="module")
def committed():
    return json.loads(RESULT.read_text(encoding="utf-8"))


def test_the_sample_is_vendored_with_its_license():
    assert len(schemas()) == COUNT >= 100
    assert (DATA / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert sum(p.stat().st_size for p in schemas()) < 3 << 20


def test_the_report_covers_the_sample_with_no_false_accept(committed):
    rows = committed["schemas"]
    assert sorted(rows) == [p.name for p in schemas()]
    assert committed["totals"] == totals(rows)
    assert committed["totals"]["invalid"] == 0 and committed["totals"]["samples"] > 0
    assert all(r["result"] in ("compiles", "refused", "error") for r in rows.values())


def subset(rows: dict) -> list[str]:
    """Every k-th schema (by name) the committed run decided within FAST_S seconds: compiles and refusals alike."""
    fast = sorted(name for name, r in rows.items() if r["result"] != "error" and r["seconds"] <= FAST_S)
    return fast[::max(1, len(fast) // SUBSET)][:SUBSET]


def test_a_subset_still_gives_the_committed_results(committed):
    names = subset(committed["schemas"])
    assert {committed["schemas"][n]["result"] for n in names} == {"compiles", "refused"}
    now = run([DATA / n for n in names], time_limit=60.0)
    for name in names:
        then, got = committed["schemas"][name], now[name]
        assert (got["result"], got.get("category")) == (then["result"], then.get("category")), (name, got)
        assert not got.get("invalid"), (name, got["invalid"])
    pytest.importorskip("jsonschema")
    assert sum(r.get("samples", 0) for r in now.values()) > 0
