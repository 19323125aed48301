"""The official JSON-Schema-Test-Suite (vendored in tests/data/json-schema-test-suite) against decspec's
`json_schema` grammar: every case whose schema compiles is run.

A valid instance must be accepted in some serialization the grammar's convention allows (`json.dumps`
spacing, compact or not, object keys in any order: the grammar fixes one); an invalid instance must be
rejected in every serialization tried (the same ones, and ASCII-escaped). Per keyword file: run, agree,
false accepts (must be 0), false rejects (each with its reason, from tests/data/json_schema_suite_reasons.json),
refused (the schema does not compile: its error, at the keyword's JSON path, says why).

    python -m benchmarks.json_schema_suite                 # table for draft 2020-12, draft 7 and draft 4
    python -m benchmarks.json_schema_suite --write         # also refresh benchmarks/results/json_schema_suite.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

SUITE = Path(__file__).resolve().parent.parent / "tests" / "data" / "json-schema-test-suite"
RESULT = Path(__file__).resolve().parent / "results" / "json_schema_suite.json"
REASONS = SUITE.parent / "json_schema_suite_reasons.json"  # "file: group" -> why its valid cases are refused
DRAFTS = {"draft2020-12": 2020, "draft7": 7, "draft4": 4}
MAX_SERIALIZATIONS = 48


def remotes() -> dict[str, Any]:
    """The suite's remote documents, at the URIs its tests name (http://localhost:1234/...)."""
    root = SUITE / "remotes"
    return {f"http://localhost:1234/{p.relative_to(root).as_posix()}": json.loads(p.read_text())
            for p in sorted(root.rglob("*.json"))}


def exact_number(text: str):
    """A JSON number as the exact decimal JSON Schema means (an int when integral: 1.0 is an integer)."""
    try:
        value = Decimal(text)
    except ArithmeticError:  # an exponent beyond Decimal's range: only unconstrained numbers have one
        return float(text)
    return int(value) if abs(value.adjusted()) < 1000 and value == value.to_integral_value() else value


def orderings(value: Any) -> list[Any]:
    """`value` with its objects' keys in (up to MAX_SERIALIZATIONS) different orders."""
    if isinstance(value, list):
        combos = itertools.islice(itertools.product(*(orderings(v) for v in value)), MAX_SERIALIZATIONS)
        return [list(c) for c in combos] or [[]]
    if not isinstance(value, dict):
        return [value]
    keys = list(value)
    orders = list(itertools.permutations(keys)) if len(keys) <= 4 else [keys, sorted(keys), keys[::-1]]
    out = []
    for order in orders:
        for values in itertools.product(*(orderings(value[k]) for k in order)):
            out.append(dict(zip(order, values)))
            if len(out) >= MAX_SERIALIZATIONS:
                return out
    return out or [{}]


def serializations(value: Any) -> list[str]:
    out = []
    for v in orderings(value):
        out += [json.dumps(v, ensure_ascii=False), json.dumps(v, ensure_ascii=False, separators=(",", ":")),
                json.dumps(v)]
    return list(dict.fromkeys(out))


def reason(file: str, group: str) -> str | None:
    return json.loads(REASONS.read_text()).get(f"{file}: {group}")


def run_file(path: Path, draft: int, refs: dict[str, Any], check=None) -> dict:
    """Run one keyword file: counts, and the cases that were refused or falsely rejected (with the group).
    `check(group, draft, grammar)` is called with each compiled schema (tests/test_json_schema_suite.py
    samples its texts)."""
    from decspec.stdlib.grammars import GrammarError
    from decspec.stdlib.grammars.json_schema import compile_schema

    row = {"cases": 0, "run": 0, "agree": 0, "false_accepts": 0, "false_rejects": 0, "refused": 0,
           "false_accept_cases": [], "false_reject_cases": [], "refusals": [], "seconds": 0.0}
    for group in json.loads(path.read_text()):
        tests = group["tests"]
        row["cases"] += len(tests)
        start = time.perf_counter()
        try:
            dfa = compile_schema(group["schema"], draft=draft, remotes=refs)
        except GrammarError as e:
            row["refused"] += len(tests)
            row["refusals"].append({"group": group["description"], "cases": len(tests), "error": e.message})
            continue
        finally:
            row["seconds"] += time.perf_counter() - start
        if check is not None and dfa is not None:
            check(group, draft, dfa)
        for test in tests:
            row["run"] += 1
            accepted = dfa is not None and any(dfa.matches(s) for s in serializations(test["data"]))
            case = {"group": group["description"], "test": test["description"]}
            if test["valid"] and not accepted:
                case["reason"] = reason(path.stem, group["description"])
            if accepted == test["valid"]:
                row["agree"] += 1
            elif accepted:
                row["false_accepts"] += 1
                row["false_accept_cases"].append(case)
            else:
                row["false_rejects"] += 1
                row["false_reject_cases"].append(case)
    row["seconds"] = round(row["seconds"], 3)
    return row


def run(drafts=tuple(DRAFTS), check=None) -> dict[str, dict[str, dict]]:
    """{draft folder: {keyword file: row}} for the top-level keyword files of each draft."""
    refs = remotes()
    out = {}
    for folder in drafts:
        files = sorted((SUITE / "tests" / folder).glob("*.json"))
        out[folder] = {p.stem: run_file(p, DRAFTS[folder], refs, check) for p in files}
    return out


def totals(rows: dict[str, dict]) -> dict:
    keys = ("cases", "run", "agree", "false_accepts", "false_rejects", "refused")
    return {k: sum(r[k] for r in rows.values()) for k in keys}


def summary(results: dict[str, dict[str, dict]]) -> dict:
    """What benchmarks/results/json_schema_suite.json holds: per file, the counts and every case that is not
    run or not agreed (no timings: the file is compared exactly by tests/test_json_schema_suite.py)."""
    return {folder: {name: {k: v for k, v in r.items() if k != "seconds"} for name, r in rows.items()}
            for folder, rows in results.items()}


def table(folder: str, rows: dict[str, dict]) -> str:
    lines = ["| file | cases | run | agree | false accepts | false rejects | refused |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['cases']} | {r['run']} | {r['agree']} | {r['false_accepts']} | "
                     f"{r['false_rejects']} | {r['refused']} |")
    t = totals(rows)
    lines.append(f"| **total** | {t['cases']} | {t['run']} ({100 * t['run'] / t['cases']:.1f} %) | {t['agree']} | "
                 f"{t['false_accepts']} | {t['false_rejects']} | {t['refused']} |")
    return f"{folder}\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draft", choices=sorted(DRAFTS), action="append", help="default: all")
    parser.add_argument("--write", action="store_true", help=f"write {RESULT.relative_to(RESULT.parent.parent.parent)}")
    parser.add_argument("--verbose", action="store_true", help="list the false accepts, false rejects and refusals")
    args = parser.parse_args()
    results = run(tuple(args.draft or DRAFTS))
    for folder, rows in results.items():
        print(table(folder, rows), end="\n\n")
        if args.verbose:
            for name, r in rows.items():
                for kind in ("false_accept_cases", "false_reject_cases", "refusals"):
                    for case in r[kind]:
                        print(f"{folder}/{name} {kind}: {json.dumps(case)}")
    if args.write:
        RESULT.write_text(json.dumps(summary(results), indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
