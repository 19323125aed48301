"""Grammar-constrained decoding with and without speculation, side by side, in one run.

    python -m benchmarks.grammar_decode [--model NAME] [--prompts 8] [--new-tokens 64] [--k 4] [--forced-k 16]
        [--repeats 2] [--threads 1] [--backend eager] [--out PATH] [--write]

Decodes the prompts one at a time, greedily, under the JSON Schema of specs/schemas/person.json, with:
- the target alone (constrained autoregressive: the baseline);
- speculative decoding with a draft model (k = --k), the grammar masking the target and the draft alike;
- grammar-forced drafts (`forced(max = --forced-k)`, specs/json_forced.dec): the tokens the grammar forces,
  and where it leaves a choice, what the row's own earlier text suggests; no draft model;
- both (`forced_then(autoregressive(draft, max = --k), max = --forced-k)`, specs/json_forced_draft.dec): the forced
  tokens, then the draft model's over the context followed by them, in one round;
and the first two without the grammar (what the mask costs). Models: the shipped pair (default; prompts like
`person = `), or a named real model (--model smollm2-135m-instruct: chat requests for a person as JSON through
its chat template; its shipped draft model for the speculative row).

Timing is interleaved: after one untimed warm-up of every row (which builds or loads the grammar index), each
repeat runs every row once, in an order rotated by the repeat; the median is reported, with the load average.
Every constrained row must give the constrained target's greedy tokens (asserted). Reports tokens/s, the ratio
to the constrained target alone, mean accepted drafts per round, and how many rows ended in JSON that parses
and has the required keys. Writes the results as JSON only to --out PATH, or with --write to
benchmarks/results/grammar_decode[-MODEL].json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import decspec
from benchmarks.output import OPTIONS, add_output_args, outputs, write_text

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "specs" / "schemas" / "person.json"
PROMPTS = ["person = ", "user = ", "PERSON = ", "data = json.loads('", "author = ", "record = ", "owner = ", "row = "]
CHAT = ["Describe a fictional programmer as JSON with name, born (a date) and language.",
        "Give me a JSON object for a person named Ada who was born on 1815-12-10 and likes python.",
        "Make up a developer profile in JSON: name, born, language.",
        "Write a JSON record for a software engineer called Linus.",
        "Return a JSON object describing a Rust programmer.",
        "Create a JSON person: name, date of birth as born, favourite language.",
        "Invent a C programmer and give her details as JSON.",
        "JSON for a person named Grace, born 1906-12-09, who writes c."]


def spec_text(grammar: bool, propose: str | None) -> str:
    lines = ['target = model("target")', "sampler = greedy"]
    if propose is not None:
        lines += [f"propose = {propose}", "verify = rejection"]
    if grammar:
        lines.append(f"grammar = json_schema({json.dumps(str(SCHEMA))})")
    return "decoder d {\n" + "\n".join("    " + line for line in lines) + "\n}\n"


def valid(text: str, required: list[str]) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and all(key in value for key in required)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a named real model (default: the shipped reference pair)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--forced-k", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default="eager")
    add_output_args(ap, "benchmarks/results/grammar_decode[-MODEL].json")
    args = ap.parse_args(argv)
    name = "grammar_decode" + (f"-{args.model}" if args.model else "")
    out, _ = outputs(args, ROOT / "benchmarks" / "results" / f"{name}.json")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model is None:
        from decspec.stdlib.models.pretrained import reference_models

        models = reference_models()
        calls = [{"input_ids": p} for p in PROMPTS[: args.prompts]]
    else:
        from decspec.stdlib.models.registry import load_named

        target = load_named(args.model)
        models = {"target": target, **({"draft": target.shipped_draft} if getattr(target, "shipped_draft", None) else {})}
        calls = [{"messages": [{"role": "user", "content": q}]} for q in (CHAT * args.prompts)[: args.prompts]]
    required = json.loads(SCHEMA.read_text())["required"]
    draft = f'autoregressive(model("draft"), max = {args.k})' if "draft" in models else None
    variants = [("target only", True, None), (f"draft model, k = {args.k}", True, draft),
                (f"forced, max = {args.forced_k}", True, f"forced(max = {args.forced_k})"),
                (f"forced then draft", True, draft and f"forced_then({draft}, max = {args.forced_k})"),
                ("target only", False, None), (f"draft model, k = {args.k}", False, draft)]
    rows = []
    for name, grammar, propose in variants:
        if propose is None and name != "target only":
            continue
        dec = decspec.compile(spec_text(grammar, propose), models=models, backend=args.backend)
        rows.append({"decoder": name, "grammar": grammar, "dec": dec, "times": []})

    def once(row) -> tuple[float, list]:
        t0 = time.perf_counter()
        results = [row["dec"].generate(max_new_tokens=args.new_tokens, seed=0, **c) for c in calls]
        return time.perf_counter() - t0, results

    load = [os.getloadavg()[0]]
    for row in rows:  # warm-up: builds (or loads) the grammar index, fills the caches
        _, row["results"] = once(row)
    for rep in range(args.repeats):
        for row in rows[rep % len(rows):] + rows[: rep % len(rows)]:
            t, row["results"] = once(row)
            row["times"].append(t)
    load.append(os.getloadavg()[0])
    for row in rows:
        res = row.pop("results")
        row.pop("dec")
        accepted = [a for r in res for rnd in r.stats.accepted for a in rnd]
        row.update(tokens_per_s=sum(sum(r.stats.new_tokens) for r in res) / statistics.median(row["times"]),
                   mean_accepted=sum(accepted) / len(accepted) if accepted else 0.0, rounds=sum(r.stats.rounds for r in res),
                   tokens=[list(map(int, r.tokens[0])) for r in res], text=[r.text[0] for r in res])
        row["valid_json"] = sum(valid(t, required) for t in row["text"])
    constrained = [r for r in rows if r["grammar"]]
    for r in constrained[1:]:
        assert r["tokens"] == constrained[0]["tokens"], f"{r['decoder']}: greedy speculation must give the constrained target's tokens"
    base = {g: next(r for r in rows if r["grammar"] == g and r["decoder"] == "target only")["tokens_per_s"] for g in (True, False)}
    print(f"{'grammar':>8} {'decoder':>20} {'tokens/s':>9} {'vs target only':>15} {'accepted/round':>15} {'valid JSON':>11}")
    for r in rows:
        r["vs_target_only"] = r["tokens_per_s"] / base[r["grammar"]]
        print(f"{'yes' if r['grammar'] else 'no':>8} {r['decoder']:>20} {r['tokens_per_s']:>9.1f} {r['vs_target_only']:>15.2f} "
              f"{r['mean_accepted']:>15.2f} {r['valid_json']:>8}/{len(calls)}")
    print("sample:", constrained[-1]["text"][0])
    print(f"load average {load[0]:.2f} at start, {load[1]:.2f} at end")
    if out:
        write_text(out, json.dumps({"args": {k: v for k, v in vars(args).items() if k not in OPTIONS},
                                    "schema": str(SCHEMA.relative_to(ROOT)), "calls": calls,
                                    "machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                                    "load_average": load,
                                    "rows": [{k: v for k, v in r.items() if k != "tokens"} for r in rows]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
