"""Front-end cost: parse + check + lower + passes for every spec in specs/ (issue 4: under 50 ms each).

    python -m benchmarks.compile_time [--repeats 20]

"first" is the first spec compiled in a fresh process, which also builds the Lark parser;
"warm" is the median of --repeats later compilations. Writes benchmarks/results/compile_time.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def front_end(path: Path) -> None:
    from decspec.compiler.lower import lower
    from decspec.compiler.passes import run_pipeline
    from decspec.dsl.check import load

    run_pipeline(lower(load(path)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    specs = sorted((ROOT / "specs").glob("*.dec"))
    t0 = time.perf_counter()
    import decspec.compiler.lower, decspec.compiler.passes, decspec.dsl.check  # noqa: E401, F401  (imports torch)
    imports = time.perf_counter() - t0
    t0 = time.perf_counter()
    front_end(specs[0])
    first = time.perf_counter() - t0
    rows = []
    for spec in specs:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            front_end(spec)
            times.append(time.perf_counter() - t0)
        rows.append({"spec": spec.name, "warm_ms": 1000 * statistics.median(times), "max_ms": 1000 * max(times)})
    print(f"importing the front end (and torch) in a fresh process: {1000 * imports:.0f} ms")
    print(f"first compilation ({specs[0].name}, includes building the parser): {1000 * first:.1f} ms")
    print(f"{'spec':<28} {'warm (median) ms':>16} {'max ms':>8}")
    for r in rows:
        print(f"{r['spec']:<28} {r['warm_ms']:>16.1f} {r['max_ms']:>8.1f}")
    out = ROOT / "benchmarks" / "results" / "compile_time.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"import_ms": 1000 * imports, "first_ms": 1000 * first, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
