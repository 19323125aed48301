"""The official JSON-Schema-Test-Suite (draft 2020-12 and draft 7, vendored in tests/data) against the
`json_schema` grammar (benchmarks/json_schema_suite.py): zero false accepts; every false reject has a reason;
the run matches the committed report (benchmarks/results/json_schema_suite.json), so a regression, or an
improvement not yet recorded, shows; at least 60 % of the draft 2020-12 cases run.

Refresh the report after a deliberate change: `python -m benchmarks.json_schema_suite --write`.
"""
from __future__ import annotations

import json

import pytest

from benchmarks.json_schema_suite import RESULT, run, summary, totals


@pytest.fixture(scope="module")
def results():
    return run()


def test_no_false_accepts(results):
    accepted = {f"{folder}/{name}": r["false_accept_cases"] for folder, rows in results.items()
                for name, r in rows.items() if r["false_accepts"]}
    assert not accepted


def test_every_false_reject_has_a_reason(results):
    unexplained = [(f"{folder}/{name}", case) for folder, rows in results.items() for name, r in rows.items()
                   for case in r["false_reject_cases"] if not case.get("reason")]
    assert not unexplained


def test_coverage(results):
    t = totals(results["draft2020-12"])
    assert t["run"] >= 0.6 * t["cases"], t


def test_matches_the_committed_report(results):
    committed = json.loads(RESULT.read_text())
    current = summary(results)
    for folder, rows in current.items():
        for name, row in rows.items():
            assert row == committed[folder][name], f"{folder}/{name}: rerun `python -m benchmarks.json_schema_suite --write`"
    assert current.keys() == committed.keys() and all(current[f].keys() == committed[f].keys() for f in current)
