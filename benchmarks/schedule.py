"""Unrolled, masked draft loop vs host-controlled loop over a compiled step (the draft_schedule pass).

    python -m benchmarks.schedule [--k 4 8] [--prompts 8] [--new-tokens 48] [--repeats 3] [--batch 1] [--out PATH] [--write]

Decodes the held-out prompts with `specs/speculative_greedy.dec` (greedy drafts, stop when the
draft's own probability of its token falls under `confidence`), the inductor backend compiled,
once per schedule, side by side in one run. An exit policy makes the unrolled loop run masked steps
after every row has stopped; the host loop pays one `alive.any()` sync per step instead. Reports
tokens/s (median of `--repeats` after a warm-up that compiles), mean drafts per round and the
draft steps run per round, and which schedule the pass picks. Writes the results as JSON only to --out PATH,
or with --write to benchmarks/results/schedule.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import decspec
from benchmarks.acceptance import heldout_prompts
from benchmarks.output import OPTIONS, add_output_args, outputs, write_text
from decspec.backends.inductor.codegen import schedule as loop_schedule
from decspec.stdlib.models.pretrained import reference_models

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "speculative_greedy.dec"
OUT = ROOT / "benchmarks" / "results" / "schedule.json"


def measure(dec, prompts: list[list[int]], batch: int, new_tokens: int, repeats: int) -> dict:
    def once() -> tuple[float, list]:
        t0, results = time.perf_counter(), []
        for i in range(0, len(prompts), batch):
            results.append(dec.generate(prompts[i : i + batch], max_new_tokens=new_tokens, seed=0, eos_token_id=None))
        return time.perf_counter() - t0, results

    once()  # warm-up: compiles
    times, results = [], []
    for _ in range(repeats):
        t, results = once()
        times.append(t)
    tokens = sum(sum(r.stats.new_tokens) for r in results)
    rounds = sum(r.stats.rounds for r in results)
    drafted = [d for r in results for row in r.stats.drafted for d in row]
    steps = sum(r.stats.model_calls.get("draft", 0) - 1 for r in results)  # minus each call's prefill
    return {
        "tokens_per_s": tokens / statistics.median(times),
        "mean_drafted": sum(drafted) / len(drafted),
        "draft_steps_per_round": steps / rounds,
        "tokens": [row for r in results for row in r.tokens],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--confidence", type=float, default=0.4)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    add_output_args(ap, OUT)
    args = ap.parse_args(argv)
    out_path, _ = outputs(args, OUT)
    torch.manual_seed(0)
    models = reference_models()
    tok = models["target"].tokenizer
    prompts = [tok.encode_prompt(p) for p in heldout_prompts(args.prompts)]
    rows = []
    for k in args.k:
        picked = loop_schedule(decspec.compile(SPEC, k=k, confidence=args.confidence, **models).graph)
        out = {}
        for schedule in ("unrolled", "host"):
            dec = decspec.compile(SPEC, k=k, confidence=args.confidence, backend="inductor", **models)
            dec.backend_options = {"compile": True, "schedule": schedule}
            out[schedule] = measure(dec, prompts, args.batch, args.new_tokens, args.repeats)
        assert out["unrolled"]["tokens"] == out["host"]["tokens"], "the two schedules must produce the same tokens"
        for schedule, m in out.items():
            rows.append({"k": k, "schedule": schedule, "picked_by_pass": schedule == picked,
                         **{key: v for key, v in m.items() if key != "tokens"},
                         "host_over_unrolled": out["host"]["tokens_per_s"] / out["unrolled"]["tokens_per_s"]})
    print(f"{'k':>3} {'schedule':>9} {'tokens/s':>9} {'drafts/round':>13} {'draft steps/round':>18} {'host/unrolled':>14} picked")
    for r in rows:
        print(f"{r['k']:>3} {r['schedule']:>9} {r['tokens_per_s']:>9.1f} {r['mean_drafted']:>13.2f} {r['draft_steps_per_round']:>18.2f} "
              f"{r['host_over_unrolled']:>14.2f} {'*' if r['picked_by_pass'] else ''}")
    if out_path:
        write_text(out_path, json.dumps({"args": {k: v for k, v in vars(args).items() if k not in OPTIONS}, "machine": platform.machine(),
                                         "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
