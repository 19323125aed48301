"""What a verification step costs against a one-token step, on a real model, by width and precision.

    python -m benchmarks.verify_cost [--model smollm2-135m-instruct] [--widths 1 2 3 5 8 16] [--repeats 5] [--threads 1]
        [--variants float32 float32-plain bfloat16] [--out PATH] [--write]

Speculative decoding pays when verifying k+1 tokens costs about what one token costs (a step bound
by reading the weights). This measures a forward step of `width` tokens after a 59-token prefix, for
each width and each variant (float32 as decspec runs it, with multi-row steps on oneDNN-prepacked
weights; float32-plain, every step through F.linear on the stored weights, as before prepacking; and
bfloat16), in turns (the order rotates every repeat), as the median CPU time of the process (`time.process_time`: on a shared machine, time spent
waiting for a core is not counted; with one thread that is the step's own work) and the median wall
time, and reports each as a ratio to the one-token step of the same variant. Prints the table; writes it as
JSON only to --out PATH, or with --write to benchmarks/results/verify_cost.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.output import add_output_args, outputs, write_text

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "verify_cost.json"
VARIANTS = {"float32": (torch.float32, True), "float32-plain": (torch.float32, False), "bfloat16": (torch.bfloat16, True)}


def step_times(model, width: int, n: int = 6) -> tuple[float, float]:
    """Median (CPU seconds, wall seconds) of a `width`-token step after a 59-token prefix."""
    cache = model.new_cache(1, 256)
    with torch.no_grad():
        model.forward(torch.arange(1, 60)[None], cache)
        cpu, wall = [], []
        for _ in range(n):
            cache.rollback(torch.tensor([59]))
            c0, w0 = time.process_time(), time.perf_counter()
            model.forward(torch.full((1, width), 5), cache)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 2, 3, 5, 8, 16])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    add_output_args(ap, OUT)
    args = ap.parse_args(argv)
    out, _ = outputs(args, OUT)
    torch.set_num_threads(args.threads)
    from decspec.stdlib.models import transformer
    from decspec.stdlib.models.registry import load_named

    loaded = {dtype: load_named(args.model, dtype=dtype) for dtype in {VARIANTS[v][0] for v in args.variants}}
    models = {v: loaded[VARIANTS[v][0]] for v in args.variants}
    load = [os.getloadavg()[0]]
    cells = [(d, w) for d in args.variants for w in args.widths]
    cpu: dict = {c: [] for c in cells}
    wall: dict = {c: [] for c in cells}
    for rep in range(args.repeats):
        for d, w in cells[rep % len(cells):] + cells[: rep % len(cells)]:
            transformer.PREPACK = VARIANTS[d][1]
            c, t = step_times(models[d], w)
            cpu[(d, w)].append(c)
            wall[(d, w)].append(t)
    load.append(os.getloadavg()[0])
    rows = []
    for d, w in cells:
        c, t = statistics.median(cpu[(d, w)]), statistics.median(wall[(d, w)])
        c1, t1 = statistics.median(cpu[(d, 1)]) if (d, 1) in cpu else None, statistics.median(wall[(d, 1)]) if (d, 1) in wall else None
        rows.append({"variant": d, "dtype": str(VARIANTS[d][0]).removeprefix("torch."), "prepacked": VARIANTS[d][1], "width": w, "cpu_ms": 1e3 * c, "wall_ms": 1e3 * t,
                     "cpu_vs_one_token": c / c1 if c1 else None, "wall_vs_one_token": t / t1 if t1 else None})
    print(f"{args.model}, {args.threads} thread(s), torch {torch.__version__}; load average {load[0]:.2f} -> {load[1]:.2f}")
    print("| variant | width | CPU ms | x one token | wall ms | x one token |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['width']} | {r['cpu_ms']:.1f} | {r['cpu_vs_one_token']:.2f} | {r['wall_ms']:.1f} | {r['wall_vs_one_token']:.2f} |")
    if out:
        write_text(out, json.dumps({"model": args.model, "threads": args.threads, "torch": torch.__version__,
                                    "load_average": load, "repeats": args.repeats, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
