"""Front-end cost: parse + check + lower + passes for every spec in specs/ (issue 4: under 50 ms each),
and the torch.compile cost of the inductor backend with a cold and a warm compile cache.

    python -m benchmarks.compile_time [--repeats 20] [--torch-compile] [--out PATH] [--write]

"first" is the first spec compiled in a fresh process, which also builds the Lark parser;
"warm" is the median of --repeats later compilations. With --torch-compile, fresh processes each
time the first `generate` of `specs/speculative.dec` on the shipped models (inductor backend,
compiled): three processes sharing one new TORCHINDUCTOR_CACHE_DIR (the first fills PyTorch's FX
graph and AOTAutograd caches, the next two reuse them), then one with those caches switched off.
Prints the times; writes them as JSON only to --out PATH, or with --write to benchmarks/results/compile_time.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.output import add_output_args, outputs, write_text

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "compile_time.json"


def front_end(path: Path) -> None:
    from decspec.compiler.lower import lower
    from decspec.compiler.passes import run_pipeline
    from decspec.dsl.check import load

    spec = load(path)
    if spec.slot("search") is None and spec.slot("denoise") is None:  # beam search, diffusion: no round graph, checking is all
        run_pipeline(lower(spec))


FIRST_GENERATE = """
import time, torch, decspec
torch.set_grad_enabled(False)
dec = decspec.compile("specs/speculative.dec", backend="inductor", temperature=0)
dec.backend_options = {"compile": True}
t0 = time.perf_counter()
dec.generate(["def fibonacci(n):"], max_new_tokens=8, seed=0)
first = time.perf_counter() - t0
t0 = time.perf_counter()
dec.generate(["def fibonacci(n):"], max_new_tokens=8, seed=0)
print(first, time.perf_counter() - t0)
"""


def torch_compile_cache() -> list[dict]:
    """Seconds of the first (compiling) and second generate call in fresh processes, cold and warm cache."""
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        runs = [("cold cache", {}), ("warm cache", {}), ("warm cache", {}),
                ("caches off", {"TORCHINDUCTOR_FX_GRAPH_CACHE": "0", "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"})]
        for label, extra in runs:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, **extra}
            out = subprocess.run([sys.executable, "-c", FIRST_GENERATE], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
            first, second = map(float, out.stdout.split()[-2:])
            rows.append({"run": label, "first_generate_s": first, "second_generate_s": second})
            print(f"{label:<11} first generate (compiles) {first:6.2f} s, second {second:6.3f} s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile with a cold and a warm cache")
    add_output_args(ap, OUT)
    args = ap.parse_args()
    out, _ = outputs(args, OUT)
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
    result = {"import_ms": 1000 * imports, "first_ms": 1000 * first, "rows": rows}
    if args.torch_compile:
        result["torch_compile"] = torch_compile_cache()
    if out:
        write_text(out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
