"""Grammar-constrained decoding on the shipped models, with and without speculation, side by side.

    python -m benchmarks.grammar_decode [--prompts 8] [--new-tokens 64] [--k 4] [--repeats 1] [--backend eager]

Decodes 8 prompts (one at a time, temperature 0) under the JSON Schema of specs/schemas/person.json: the target
alone, and speculative decoding with the draft model (k=4) where the grammar masks the target and the draft
alike. The same two decoders without the grammar give the cost of the mask. Reports tokens/s (median of
`--repeats` after a warm-up that builds the grammar index), mean accepted drafts per round, how many rows
ended in JSON that parses and has the required keys, and checks that speculation reproduces the constrained
target's greedy tokens exactly. Writes benchmarks/results/grammar_decode.json.
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
from decspec.stdlib.models.pretrained import reference_models

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "specs" / "schemas" / "person.json"
PROMPTS = ["person = ", "user = ", "PERSON = ", "data = json.loads('", "author = ", "record = ", "owner = ", "row = "]


def spec_text(grammar: bool, speculative: bool) -> str:
    lines = ['target = model("target")', "sampler = greedy"]
    if speculative:
        lines += ['propose = autoregressive(model("draft"), max = k)', "verify = rejection"]
    if grammar:
        lines.append(f"grammar = json_schema({json.dumps(str(SCHEMA))})")
    return "decoder d(k: int = 4) {\n" + "\n".join("    " + line for line in lines) + "\n}\n"


def valid(text: str, required: list[str]) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and all(key in value for key in required)


def measure(dec, prompts: list[str], new_tokens: int, repeats: int) -> dict:
    def once():
        t0 = time.perf_counter()
        results = [dec.generate(p, max_new_tokens=new_tokens, seed=0) for p in prompts]
        return time.perf_counter() - t0, results

    once()  # warm-up: builds (or loads) the grammar index, fills the caches
    times, results = [], []
    for _ in range(repeats):
        t, results = once()
        times.append(t)
    tokens = sum(sum(r.stats.new_tokens) for r in results)
    accepted = [a for r in results for rnd in r.stats.accepted for a in rnd]
    return {"tokens_per_s": tokens / statistics.median(times), "new_tokens": tokens, "seconds": statistics.median(times),
            "mean_accepted": sum(accepted) / len(accepted) if accepted else 0.0,
            "rounds": sum(r.stats.rounds for r in results),
            "tokens": [r.tokens[0] for r in results], "text": [r.text[0] for r in results]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--backend", default="eager")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    models = reference_models()
    prompts = PROMPTS[: args.prompts]
    required = json.loads(SCHEMA.read_text())["required"]
    rows = []
    for grammar in (True, False):
        for speculative in (False, True):
            dec = decspec.compile(spec_text(grammar, speculative), models=models, k=args.k, backend=args.backend)
            m = measure(dec, prompts, args.new_tokens, args.repeats)
            rows.append({"grammar": grammar, "speculative": speculative, "k": args.k if speculative else 0,
                         "valid_json": sum(valid(t, required) for t in m["text"]), **m})
    constrained = [r for r in rows if r["grammar"]]
    assert constrained[0]["tokens"] == constrained[1]["tokens"], "greedy speculation must give the constrained target's tokens"
    base = {r["speculative"]: r["tokens_per_s"] for r in rows if not r["grammar"]}
    print(f"{'grammar':>8} {'decoder':>14} {'tokens/s':>9} {'vs no grammar':>14} {'accepted/round':>15} {'valid JSON':>11}")
    for r in rows:
        r["vs_no_grammar"] = r["tokens_per_s"] / base[r["speculative"]]
        name = f"spec k={r['k']}" if r["speculative"] else "target only"
        print(f"{'yes' if r['grammar'] else 'no':>8} {name:>14} {r['tokens_per_s']:>9.1f} {r['vs_no_grammar']:>14.2f} "
              f"{r['mean_accepted']:>15.2f} {r['valid_json']:>8}/{len(prompts)}")
    print("speculative / target only, with the grammar: "
          f"{constrained[1]['tokens_per_s'] / constrained[0]['tokens_per_s']:.2f}x (same tokens)")
    print("sample:", prompts[0] + constrained[1]["text"][0])
    out_path = ROOT / "benchmarks" / "results" / "grammar_decode.json"
    out_path.write_text(json.dumps({"args": vars(args), "schema": str(SCHEMA.relative_to(ROOT)), "prompts": prompts,
                                    "machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                                    "rows": [{k: v for k, v in r.items() if k != "tokens"} for r in rows]}, indent=1) + "\n")
    print(f"wrote {out_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
