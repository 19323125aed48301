"""JSONSchemaBench-style coverage: how many real-world JSON schemas decspec's `json_schema` grammar compiles,
and whether what it compiles is sound (random texts of every compiled schema validate under `jsonschema`).

The schemas (benchmarks/data/schemastore, README.md there) are a fixed sample of SchemaStore's, the
collection JSONSchemaBench's `JsonSchemaStore` split was drawn from: the file names that split holds,
as SchemaStore has them at a pinned commit, the first `COUNT` by the SHA-256 of their name. Each one is
compiled in a child process under a time limit and classified:

- compiles: an automaton, or a Lark grammar for a recursive schema; then `--samples` random texts are
  drawn from it and validated with `jsonschema` (formats asserted, numbers as exact decimals): an
  invalid one is a false accept, a bug;
- refused: a `GrammarError` (what it names decides the category: `REASONS`);
- error: any other exception, a time-out, or the child dying (memory).

    python -m benchmarks.json_schema_coverage                       # table; all schemas (about 25 min on 2 cores)
    python -m benchmarks.json_schema_coverage --write               # also refresh benchmarks/results/json_schema_coverage.json
    python -m benchmarks.json_schema_coverage --only dependabot-2.0.json --verbose
    python -m benchmarks.json_schema_coverage --vendor SCHEMASTORE_GIT_DIR JSONSCHEMABENCH_GIT_DIR   # redo the sample
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import random
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.json_schema_suite import exact_number

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "schemastore"
RESULT = Path(__file__).resolve().parent / "results" / "json_schema_coverage.json"
SCHEMASTORE_COMMIT = "3b6446ad8a077bac56f4a4796c0b7fd88927fc8e"  # github.com/SchemaStore/schemastore, Apache-2.0
JSONSCHEMABENCH_COMMIT = "ba103c73756198dd9b149ddc7db7867da7a077f6"  # github.com/guidance-ai/jsonschemabench: names only
COUNT = 150
TIME_LIMIT_S = 60.0
MEMORY_LIMIT = 4 << 30  # bytes of address space per compile
SAMPLES = 5  # random texts validated per compiled schema

# (category, pattern of the GrammarError message), first match wins
REASONS = [
    ("draft", r"is not a supported draft"),
    ("remote $ref", r"a document that is not available"),
    ("format", r"format '.*' is not supported"),
    ("pattern", r"\.pattern(Properties)?\b.*regex|regex .* (not supported|cannot)"),
    ("recursive combination", r"is recursive|applies itself in place"),
    ("uniqueItems", r"uniqueItems"),
    ("numbers", r"multipleOf|minimum|maximum|number"),
    ("unsupported keyword", r"keyword '.*' is not supported"),
    ("size bound", r"states|too large|larger than|more than|over the limit"),
    ("accepts nothing", r"accepts nothing"),
]

# What the other engines' authors publish: MaskBench (guidance-ai/jsonschemabench, maskbench/README.md at
# JSONSCHEMABENCH_COMMIT, the 2025-03-27 run over 11,306 schemas, all JSONSchemaBench splits and more; 15 minutes
# and 40 GiB per schema). A schema "compiles" unless it gave a compile error, a crash, running out of memory or a
# time-out; "passing" also accepted every valid and rejected every invalid test instance; "invalidation errors"
# are invalid instances accepted (false accepts).
PUBLISHED = [  # engine, version, schemas, compile errors + crashes + out of memory + time-outs, passing, false accepts
    ("LLGuidance", "0.7.10", 11306, 2377 + 0 + 0 + 0, 8909, 0),
    ("XGrammar", "0.1.17", 11306, 90 + 37 + 0 + 241, 8122, 1368),
    ("Outlines (outlines-core)", "0.2.3", 11306, 1773 + 0 + 188 + 60, 7050, 822),
    ("llama.cpp", "0.3.8", 11306, 1301 + 0 + 0 + 1, 6505, 649),
]


# --- the sample -------------------------------------------------------------------------------------

def _git(git_dir: str, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", git_dir, *args], check=True, capture_output=True).stdout


def _names(git_dir: str, commit: str, folder: str) -> dict[str, str]:
    """{file name: blob id} of the files directly in `folder` at `commit`."""
    out = {}
    for line in _git(git_dir, "ls-tree", commit, folder + "/").decode().splitlines():
        meta, path = line.split("\t")
        out[path.rsplit("/", 1)[1]] = meta.split()[2]
    return out


def select(schemastore_names, bench_names, count: int = COUNT) -> list[str]:
    """The sample: the names in both lists, the first `count` by the SHA-256 of the name (a fixed shuffle)."""
    return sorted(set(schemastore_names) & set(bench_names), key=lambda n: hashlib.sha256(n.encode()).hexdigest())[:count]


def vendor(schemastore_git: str, bench_git: str) -> list[str]:
    """Write the sample into benchmarks/data/schemastore: each schema re-serialized compactly (the same JSON
    value, key order kept), with SchemaStore's LICENSE and NOTICE beside them."""
    ours = _names(schemastore_git, SCHEMASTORE_COMMIT, "src/schemas/json")
    names = select(ours, _names(bench_git, JSONSCHEMABENCH_COMMIT, "data/JsonSchemaStore"))
    DATA.mkdir(parents=True, exist_ok=True)
    for old in DATA.glob("*.json"):
        old.unlink()
    for name in names:
        value = json.loads(_git(schemastore_git, "cat-file", "blob", ours[name]))
        (DATA / name).write_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    for extra in ("LICENSE", "NOTICE"):
        (DATA / extra).write_bytes(_git(schemastore_git, "show", f"{SCHEMASTORE_COMMIT}:{extra}"))
    return names


def schemas() -> list[Path]:
    return sorted(DATA.glob("*.json"))


# --- one schema ---------------------------------------------------------------------------------------

def category(message: str) -> str:
    for name, pattern in REASONS:
        if re.search(pattern, message):
            return name
    return "other"


def sample_texts(grammar, rng: random.Random, count: int) -> list[bytes]:
    """Random texts of an automaton (random walks), or of a recursive schema's grammar (random walks under the
    CFG matcher's byte masks; it knows no shortest completion, so a walk past 400 bytes is dropped)."""
    from decspec.stdlib.grammars.automaton import ByteDFA, random_examples

    if isinstance(grammar, ByteDFA):
        return random_examples(grammar, rng, count, limit=200, stop=0.1)
    matcher = grammar.matcher([bytes([b]) for b in range(256)] + [None], 256)
    out = []
    for _ in range(20 * count):
        state, text = matcher.start, bytearray()
        while len(text) < 400:
            allowed = matcher.allowed(state).tolist()
            if 256 in allowed and (rng.random() < 0.1 or len(allowed) == 1):
                out.append(bytes(text))
                break
            byte = rng.choice([t for t in allowed if t != 256])
            text.append(byte)
            state = int(matcher.next_state([state], [byte])[0])
        if len(out) == count:
            break
    return out


def check(schema: Any, samples: int, seed: str) -> dict:
    """Compile one schema and validate `samples` of its texts: the row the table shows."""
    from decspec.stdlib.grammars import GrammarError
    from decspec.stdlib.grammars.json_schema import compile_schema, schema_draft

    start = time.perf_counter()
    try:
        grammar = compile_schema(schema)
    except GrammarError as e:
        return {"result": "refused", "category": category(e.message), "message": e.message,
                "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    if grammar is None:
        return {"result": "refused", "category": "accepts nothing", "message": "no JSON value is valid", "seconds": seconds}
    row = {"result": "compiles", "kind": "dfa" if hasattr(grammar, "transitions") else "cfg", "seconds": seconds,
           "samples": 0, "invalid": []}
    try:
        import jsonschema
    except ImportError:
        return row
    validator_class = {2020: jsonschema.Draft202012Validator, 7: jsonschema.Draft7Validator,
                       4: jsonschema.Draft4Validator}[schema_draft(schema)]
    exact = json.loads(json.dumps(schema), parse_float=exact_number)
    validator = validator_class(exact, format_checker=validator_class.FORMAT_CHECKER)
    for text in sample_texts(grammar, random.Random(seed), samples):
        row["samples"] += 1
        errors = list(validator.iter_errors(json.loads(text.decode(), parse_float=exact_number)))
        if errors:
            row["invalid"].append({"text": text.decode()[:300], "error": errors[0].message[:300]})
    return row


def _child(path: str, samples: int, conn) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
        conn.send(check(schema, samples, Path(path).name))
    except BaseException as e:  # noqa: BLE001 - the parent records any failure as an error row
        conn.send({"result": "error", "category": type(e).__name__, "message": str(e)[:300]})


def run_one(path: Path, samples: int = SAMPLES, time_limit: float = TIME_LIMIT_S) -> dict:
    """`check` in a forked child: a time-out or a crash (memory) is an error row, not a hung benchmark."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(str(path), samples, send))
    start = time.perf_counter()
    child.start()
    send.close()
    if receive.poll(time_limit):
        try:
            row = receive.recv()
        except EOFError:
            row = {"result": "error", "category": "crashed", "message": f"exit code {child.exitcode}"}
    else:
        row = {"result": "error", "category": "time limit", "message": f"no answer within {time_limit:g} s"}
    child.kill()
    child.join()
    row.setdefault("seconds", time.perf_counter() - start)
    row["seconds"] = round(row["seconds"], 2)
    return row


def run(paths: list[Path] | None = None, samples: int = SAMPLES, time_limit: float = TIME_LIMIT_S,
        log=None) -> dict[str, dict]:
    """{schema file name: row} over `paths` (default: the whole sample)."""
    import decspec.stdlib.grammars.json_schema  # noqa: F401 - loaded once here: every forked child runs this same code
    out = {}
    for path in paths if paths is not None else schemas():
        out[path.name] = run_one(path, samples, time_limit)
        if log is not None:
            r = out[path.name]
            log(f"{path.name}: {r['result']} {r.get('category', r.get('kind', ''))} {r['seconds']} s")
    return out


# --- the report ---------------------------------------------------------------------------------------

def totals(rows: dict[str, dict]) -> dict:
    results = Counter(r["result"] for r in rows.values())
    return {"schemas": len(rows), "compiles": results["compiles"], "refused": results["refused"], "error": results["error"],
            "samples": sum(r.get("samples", 0) for r in rows.values()),
            "invalid": sum(len(r.get("invalid", ())) for r in rows.values())}


def summary(rows: dict[str, dict]) -> dict:
    """What benchmarks/results/json_schema_coverage.json holds (timings apart, which tests ignore)."""
    return {"selection": {"schemastore_commit": SCHEMASTORE_COMMIT, "jsonschemabench_commit": JSONSCHEMABENCH_COMMIT,
                          "count": COUNT, "rule": "names in JSONSchemaBench's JsonSchemaStore split and in SchemaStore's "
                                                  "src/schemas/json, the first COUNT by sha256(name)"},
            "time_limit_s": TIME_LIMIT_S, "samples_per_schema": SAMPLES, "totals": totals(rows),
            "categories": dict(sorted(Counter(f"{r['result']}: {r['category']}" for r in rows.values()
                                              if r["result"] != "compiles").items())),
            "schemas": rows}


def table(rows: dict[str, dict]) -> str:
    t = totals(rows)
    n = t["schemas"]
    lines = ["| result | schemas | share |", "|---|---|---|", f"| compiles | {t['compiles']} | {100 * t['compiles'] / n:.1f} % |"]
    for key, count in sorted(Counter(f"{r['result']}: {r['category']}" for r in rows.values() if r["result"] != "compiles").items(),
                             key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {key} | {count} | {100 * count / n:.1f} % |")
    lines.append(f"| **total** | {n} | |")
    lines.append(f"\nrandom texts validated: {t['samples']}, invalid (false accepts): {t['invalid']}")
    return "\n".join(lines)


def published() -> str:
    """The other engines' published figures (PUBLISHED), as shares."""
    lines = ["| engine (MaskBench, 11,306 schemas) | compiles | passes its tests | schemas with a false accept |",
             "|---|---|---|---|"]
    for engine, version, n, failed, passing, false_accepts in PUBLISHED:
        lines.append(f"| {engine} {version} | {100 * (n - failed) / n:.1f} % | {100 * passing / n:.1f} % | "
                     f"{false_accepts:,} ({100 * false_accepts / n:.1f} %) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="a schema file name (repeatable); default: all")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="random texts validated per compiled schema")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="seconds per schema")
    parser.add_argument("--write", action="store_true", help=f"write {RESULT.relative_to(ROOT)}")
    parser.add_argument("--verbose", action="store_true", help="one line per schema as it runs; the refusals' messages")
    parser.add_argument("--vendor", nargs=2, metavar=("SCHEMASTORE_GIT_DIR", "JSONSCHEMABENCH_GIT_DIR"),
                        help="rewrite benchmarks/data/schemastore from the two repositories' git directories")
    args = parser.parse_args()
    if args.vendor:
        print(f"{len(vendor(*args.vendor))} schemas written to {DATA.relative_to(ROOT)}")
        return
    paths = [DATA / name for name in args.only] if args.only else schemas()
    rows = run(paths, args.samples, args.time_limit, log=print if args.verbose else None)
    print(table(rows), published(), sep="\n\n")
    if args.verbose:
        for name, r in rows.items():
            if r["result"] != "compiles" or r.get("invalid"):
                print(f"{name}: {r['result']} ({r.get('category', '')}): {r.get('message', '')} {r.get('invalid', '')}")
    if args.write:
        RESULT.write_text(json.dumps(summary(rows), indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
