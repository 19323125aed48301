"""The official JSON-Schema-Test-Suite (drafts 2020-12, 7 and 4, vendored in tests/data) against the
`json_schema` grammar (benchmarks/json_schema_suite.py): zero false accepts; every false reject has a reason;
the run matches the committed report (benchmarks/results/json_schema_suite.json), so a regression, or an
improvement not yet recorded, shows; at least 60 % of the draft 2020-12 cases run. Beyond the suite's own
instances, random texts from each compiled automaton must validate under the `jsonschema` package.

Refresh the report after a deliberate change: `python -m benchmarks.json_schema_suite --write`.
"""
from __future__ import annotations

import json
import random

import pytest

from benchmarks.json_schema_suite import RESULT, exact_number, remotes, run, summary, totals
from decspec.stdlib.grammars.automaton import ByteDFA, random_examples

SAMPLES = 3  # random texts per compiled schema


class Oracle:
    """Validates random texts of each compiled schema with `jsonschema` (formats asserted, numbers exact)."""

    def __init__(self, jsonschema):
        import referencing
        from referencing.jsonschema import DRAFT4, DRAFT7, DRAFT202012

        self.jsonschema, self.failures, self.samples = jsonschema, [], 0
        exact = {uri: json.loads(json.dumps(doc), parse_float=exact_number) for uri, doc in remotes().items()}
        later = tuple(f"http://localhost:1234/{d}/" for d in ("draft2020-12", "draft7", "v1"))  # boolean schemas: not draft 4's
        self.registries = {draft: referencing.Registry().with_resources(
            [(uri, spec.create_resource(doc)) for uri, doc in exact.items() if draft != 4 or not uri.startswith(later)])
            for draft, spec in ((2020, DRAFT202012), (7, DRAFT7), (4, DRAFT4))}

    def __call__(self, group: dict, draft: int, grammar) -> None:
        if not isinstance(grammar, ByteDFA):  # a recursive schema's Lark grammar: sampled in test_grammars_json_schema
            return
        validator_class = {2020: self.jsonschema.Draft202012Validator, 7: self.jsonschema.Draft7Validator,
                           4: self.jsonschema.Draft4Validator}[draft]
        schema = json.loads(json.dumps(group["schema"]), parse_float=exact_number)
        validator = validator_class(schema, registry=self.registries[draft], format_checker=validator_class.FORMAT_CHECKER)
        rng = random.Random(group["description"])
        for text in random_examples(grammar, rng, SAMPLES, limit=120, stop=0.15):
            text = text.decode()
            self.samples += 1
            errors = list(validator.iter_errors(json.loads(text, parse_float=exact_number)))
            if errors:
                self.failures.append((group["description"], text, errors[0].message))


@pytest.fixture(scope="module")
def checked():
    try:
        import jsonschema
    except ImportError:
        return run(), None
    oracle = Oracle(jsonschema)
    return run(check=oracle), oracle


@pytest.fixture(scope="module")
def results(checked):
    return checked[0]


def test_no_false_accepts(results):
    accepted = {f"{folder}/{name}": r["false_accept_cases"] for folder, rows in results.items()
                for name, r in rows.items() if r["false_accepts"]}
    assert not accepted


def test_random_texts_validate(checked):
    oracle = checked[1]
    if oracle is None:
        pytest.skip("jsonschema is not installed")
    assert oracle.samples > 1000 and not oracle.failures


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
