"""Statistical losslessness figures: chi-square p-values and TV distances of sampled output
against the exact target distribution, for each verifier, over fixed random configurations.

    python -m benchmarks.lossless [--configs 20] [--samples 4000] [--out PATH] [--write]

Prints a table; writes the figures as JSON only to --out PATH, or with --write to benchmarks/results/lossless.json.
`accept_all` is a deliberately broken verifier (it accepts every draft): it must be rejected, which shows the check
has teeth.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import decspec
from benchmarks.output import add_output_args, outputs, write_text
from decspec.stdlib.models.table import TableModel
from decspec.testing import broken_verifier, chi_square, pipeline_text, sequence_distribution, total_variation

NEW_TOKENS = 3
OUT = Path(__file__).parent / "results" / "lossless.json"


def config(rng: random.Random) -> dict:
    V = rng.randint(2, 5)
    pipeline = []
    if rng.random() < 0.7:
        pipeline.append(("temperature", {"t": rng.choice([0.5, 0.8, 1.0, 1.5])}))
    if rng.random() < 0.4:
        pipeline.append(("top_k", {"k": rng.randint(1, V)}))
    if rng.random() < 0.4:
        pipeline.append(("top_p", {"p": rng.choice([0.5, 0.75, 0.9])}))
    return {"vocab": V, "k": rng.randint(1, 4), "target_seed": rng.randrange(10**6), "draft_seed": rng.randrange(10**6), "pipeline": pipeline}


def run(cfg: dict, verifier: str, samples: int) -> dict:
    V = cfg["vocab"]
    target = TableModel.random(V, 1, seed=cfg["target_seed"])
    draft = TableModel.random(V, 1, seed=cfg["draft_seed"], temperature=2.0)
    lines = ['target = model("target")', 'draft = model("draft")', f"propose = autoregressive(draft, max = {cfg['k']})", f"verify = {verifier}"]
    if cfg["pipeline"]:
        lines.append(f"sampler = {pipeline_text(cfg['pipeline'])}")
    dec = decspec.compile("decoder d() {\n" + "\n".join(lines) + "\n}", target=target, draft=draft)
    out = dec.generate([[1]] * samples, max_new_tokens=NEW_TOKENS, seed=0)
    expected = sequence_distribution(target, [1], NEW_TOKENS, cfg["pipeline"])
    stat, p = chi_square(out.tokens, expected)
    return {"chi2": stat, "p": p, "tv": total_variation(out.tokens, expected), "bins": len(expected), "mean_accepted": out.stats.mean_accepted}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=int, default=20)
    ap.add_argument("--samples", type=int, default=4000)
    add_output_args(ap, OUT)
    args = ap.parse_args()
    out, _ = outputs(args, OUT)
    rng = random.Random(0)
    configs = [config(rng) for _ in range(args.configs)]
    rows = []
    print(f"{'verifier':<11} {'configs':>7} {'min p':>10} {'median p':>9} {'rejected@1e-6':>13} {'mean TV':>8} {'max TV':>7}")
    for verifier in ["rejection", "greedy", "accept_all"]:
        with broken_verifier("accept_all"):
            res = [run(c, verifier, args.samples) for c in configs]
        ps, tvs = [r["p"] for r in res], [r["tv"] for r in res]
        rows.append({"verifier": verifier, "results": res})
        print(f"{verifier:<11} {len(res):>7} {min(ps):>10.3g} {statistics.median(ps):>9.3f} {sum(p < 1e-6 for p in ps):>13} {statistics.mean(tvs):>8.4f} {max(tvs):>7.4f}")
    if out:
        write_text(out, json.dumps({"samples": args.samples, "new_tokens": NEW_TOKENS, "configs": configs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
