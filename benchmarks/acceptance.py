"""How well each shipped draft predicts the shipped target: mean accepted tokens per round on held-out code.

    python -m benchmarks.acceptance [--prompts 24] [--new-tokens 64] [--k 4] [--out PATH] [--doc PATH] [--write]

Prompts are cut from the standard-library modules the models never trained on (train.HELDOUT):
up to 600 characters of a file ending at the end of a `def ...:` line. For each draft and
temperature (0 = greedy, 1 = plain sampling, no top-p) it generates `--new-tokens` per prompt with
speculation length k and reports the mean number of drafted tokens accepted per round (tokens
committed per round = that + 1), and the acceptance rate (accepted / drafted).

- draft model and early exit: decspec's own decoder (`specs/speculative.dec`, rejection verifier),
  with the 1-layer draft model or `EarlyExit(target, layer=L)` as the draft;
- Medusa / Hydra heads: `specs/medusa.dec` and `specs/hydra.dec` (`heads(target, kind = ..., max = k)`,
  a chain of k drafts from the target's heads, rejection verifier);
- EAGLE head: `specs/eagle.dec` (`eagle(target, max = k)`, a chain of k drafts, rejection verifier).

Prints the table; writes the JSON and the page only where --out / --doc say, or with --write to
benchmarks/results/acceptance.json and docs/acceptance.md.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

import decspec
from benchmarks.output import add_output_args, outputs, write_text
from decspec.stdlib.models.pretrained import reference_models
from decspec.stdlib.models.train import corpus_files
from decspec.stdlib.models.views import EarlyExit

ROOT = Path(__file__).resolve().parent.parent
OUT, DOC = ROOT / "benchmarks" / "results" / "acceptance.json", ROOT / "docs" / "acceptance.md"
SPEC = ROOT / "specs" / "speculative.dec"


def heldout_prompts(n: int, context_chars: int = 600) -> list[str]:
    """n prompts, each ending at the end of a `def` line of a held-out module, spread evenly over all such lines."""
    _, heldout = corpus_files()
    candidates = []
    for path in heldout:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"^[ \t]*def [^\n]*:[ \t]*$", text, flags=re.M):
            start = max(0, m.end() - context_chars)
            start = text.find("\n", start) + 1 if start else 0  # begin on a line boundary
            candidates.append(text[start : m.end()] + "\n")
    step = max(1, len(candidates) // n)
    return candidates[::step][:n]


def measure(args) -> list[dict]:
    models = reference_models()
    target, draft = models["target"], models["draft"]
    tok = target.tokenizer
    prompts = heldout_prompts(args.prompts)
    ids = [tok.encode_prompt(p) for p in prompts]
    rows = []
    drafts = [("draft model (1 layer)", draft)] + [
        (f"early exit, layer {L}", EarlyExit(target, L)) for L in range(1, target.num_layers)
    ]
    for temperature in (0.0, 1.0):
        for name, model in drafts:
            dec = decspec.compile(SPEC, target=target, draft=model, k=args.k, temperature=temperature, top_p=1.0)
            t0 = time.perf_counter()
            res = dec.generate(ids, max_new_tokens=args.new_tokens, seed=0, eos_token_id=None)
            s = res.stats
            rows.append({"draft": name, "temperature": temperature, "k": args.k, "mean_accepted": s.mean_accepted,
                         "tokens_per_round": s.mean_tokens_per_round, "acceptance_rate": s.acceptance_rate,
                         "rounds": s.rounds, "seconds": time.perf_counter() - t0})
            print(_line(rows[-1]), flush=True)
        for kind in ("medusa", "hydra", "eagle"):  # specs/medusa.dec, hydra.dec: heads(target, kind = ..., max = k); eagle.dec: eagle(target, max = k)
            dec = decspec.compile(ROOT / "specs" / f"{kind}.dec", target=target, k=args.k, temperature=temperature)
            t0 = time.perf_counter()
            s = dec.generate(ids, max_new_tokens=args.new_tokens, seed=0, eos_token_id=None).stats
            rows.append({"draft": "eagle head" if kind == "eagle" else f"{kind} heads", "temperature": temperature, "k": args.k, "mean_accepted": s.mean_accepted,
                         "tokens_per_round": s.mean_tokens_per_round, "acceptance_rate": s.acceptance_rate,
                         "rounds": s.rounds, "seconds": time.perf_counter() - t0})
            print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    return (f"{r['draft']:<24} T={r['temperature']:<3} accepted/round {r['mean_accepted']:.2f}  "
            f"tokens/round {r['tokens_per_round']:.2f}  acceptance {r['acceptance_rate']:.2f}")


def table(rows: list[dict]) -> str:
    drafts = list(dict.fromkeys(r["draft"] for r in rows))
    by = {(r["draft"], r["temperature"]): r for r in rows}
    lines = ["| draft | accepted / round, T=0 | acceptance, T=0 | accepted / round, T=1 | acceptance, T=1 |", "|---|---|---|---|---|"]
    for d in drafts:
        a, b = by[(d, 0.0)], by[(d, 1.0)]
        lines.append(f"| {d} | {a['mean_accepted']:.2f} | {a['acceptance_rate']:.2f} | {b['mean_accepted']:.2f} | {b['acceptance_rate']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    add_output_args(ap, OUT, DOC, "--doc")
    args = ap.parse_args()
    out, doc = outputs(args, OUT, DOC)
    torch.set_grad_enabled(False)
    rows = measure(args)
    if out:
        write_text(out, json.dumps({"prompts": args.prompts, "new_tokens": args.new_tokens, "k": args.k, "rows": rows}, indent=2) + "\n")
    command = f"python -m benchmarks.acceptance --prompts {args.prompts} --new-tokens {args.new_tokens} --k {args.k}" + " --write" * args.write
    page = (
        "# Acceptance of the shipped drafts\n\n"
        f"Mean drafted tokens accepted per round (speculation length k = {args.k}; tokens committed per round = that + 1)\n"
        f"and acceptance rate (accepted / drafted), on {args.prompts} held-out standard-library prompts, {args.new_tokens} new tokens each,\n"
        "for the shipped reference target. Temperature 0 is greedy; temperature 1 samples the plain distribution (no top-p).\n\n"
        f"Produced by `{command}` (JSON: `benchmarks/results/acceptance.json`).\n\n" + table(rows) + "\n"
    )
    if doc:
        write_text(doc, page)
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
