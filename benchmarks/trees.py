"""Token trees of one node budget side by side on the shipped pair: mean accepted drafts per round.

    python -m benchmarks.trees [--prompts 8] [--new-tokens 48] [--out PATH] [--write]

For 8 and 14 nodes (depth 4) and temperatures 0 and 1, with `multi_rejection`: a full `tree` (widths
[2, 1, 1, 1] / [2, 2, 1, 1]), `dynamic_tree` (children 2, expand 1 / 2), `eagle2_tree` (children 3,
expand 2 / 3, the rerank keeping 8 / 14) and `sequoia`, whose acceptance rates are measured first
(`measure_acceptance`, 4 ranks) on other held-out prompts than the ones decoded. Prompts are
benchmarks/acceptance.py's held-out code. Prints the table; writes the JSON where --out says, or with
--write to benchmarks/results/trees.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import decspec
from benchmarks.acceptance import heldout_prompts
from benchmarks.output import add_output_args, outputs, write_text
from decspec.stdlib.models.pretrained import reference_models
from decspec.stdlib.sequoia import measure_acceptance, sequoia_parents, sequoia_value

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "trees.json"
SIZES = {8: ("[2, 1, 1, 1]", (2, 1), (3, 2)), 14: ("[2, 2, 1, 1]", (2, 2), (3, 3))}  # nodes: widths, dynamic, eagle2


def spec(propose: str, temperature: float) -> str:
    return (f'decoder t() {{\n    target = model("target")\n    draft = model("draft")\n    sampler = temperature({temperature})\n'
            f'    propose = {propose}\n    verify = multi_rejection\n}}\n')


def proposals(nodes: int, rates: str) -> list[tuple[str, str]]:
    widths, (c, k), (ec, ek) = SIZES[nodes]
    return [("tree", f"tree(draft, widths = {widths})"),
            ("dynamic_tree", f"dynamic_tree(draft, children = {c}, expand = {k}, depth = 4)"),
            ("eagle2_tree", f"eagle2_tree(draft, children = {ec}, expand = {ek}, depth = 4, nodes = {nodes})"),
            ("sequoia", f"sequoia(draft, budget = {nodes}, depth = 4, acceptance = {rates})")]


def measure(args) -> list[dict]:
    models = reference_models()
    target, draft = models["target"], models["draft"]
    encode = target.tokenizer.encode_prompt
    prompts = heldout_prompts(5 * args.prompts)
    ids = [encode(p) for p in prompts[: args.prompts]]
    calibration = [encode(p) for p in prompts[args.prompts:][::4][: args.prompts]]  # other prompts: the rates' own
    rows = []
    for temperature in (0.0, 1.0):
        rates = tuple(round(x, 3) for x in measure_acceptance(target, draft, calibration, ranks=4, temperature=temperature, samples=16))
        print(f"T = {temperature}: measured acceptance {list(rates)}", flush=True)
        for nodes in SIZES:
            for name, propose in proposals(nodes, str(list(rates))):
                t0 = time.perf_counter()
                stats = decspec.compile(spec(propose, temperature), target=target, draft=draft).generate(
                    ids, max_new_tokens=args.new_tokens, seed=0, eos_token_id=None).stats
                row = {"tree": name, "propose": propose, "nodes": nodes, "temperature": temperature,
                       "mean_accepted": stats.mean_accepted, "rounds": stats.rounds, "seconds": time.perf_counter() - t0}
                if name == "sequoia":
                    row.update(acceptance=list(rates), parents=list(sequoia_parents(rates, nodes, 4)),
                               predicted=sequoia_value(rates, nodes, 4))
                rows.append(row)
                print(f"  {nodes:2d} nodes  {propose:75s} mean accepted {stats.mean_accepted:.2f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    add_output_args(ap, OUT)
    args = ap.parse_args()
    rows = measure(args)
    out, _ = outputs(args, OUT)
    if out:
        write_text(out, json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
