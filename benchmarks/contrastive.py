"""Contrastive decoding one token per round vs speculative contrastive decoding (the amateur drafts), shipped pair.

    python -m benchmarks.contrastive [--prompts 4] [--new-tokens 48] [--k 4] [--backend eager]

Decodes the held-out prompts (one batch) with specs/contrastive.dec (greedy) and specs/speculative_contrastive.dec at
temperature 0 and 1. Prints, per decoder: rounds, mean drafts accepted per round, tokens committed per round, model
calls per role and tokens/s (wall time of the one call; a shared CPU, so read it as a rough figure). Both speculative
runs sample exactly the contrastive distribution (tests/test_combine.py); the figures say how well the amateur, whose
preferences the contrastive scores subtract, predicts it.
"""
from __future__ import annotations

import argparse

import decspec
from benchmarks.acceptance import heldout_prompts

RUNS = [("contrastive", {}), ("speculative_contrastive", {"temperature": 0.0}), ("speculative_contrastive", {"temperature": 1.0})]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--backend", default="eager")
    args = parser.parse_args(argv)
    prompts = heldout_prompts(args.prompts)
    for spec, overrides in RUNS:
        if spec == "speculative_contrastive":
            overrides = {**overrides, "k": args.k}
        dec = decspec.compile(f"specs/{spec}.dec", backend=args.backend, **overrides)
        stats = dec.generate(prompts, max_new_tokens=args.new_tokens, seed=0, eos_token_id=None).stats
        shown = ", ".join(f"{k}={v}" for k, v in overrides.items())
        print(f"{spec}({shown}): rounds {stats.rounds}, accepted/round {stats.mean_accepted:.2f}, "
              f"tokens/round {stats.mean_tokens_per_round:.2f}, model calls {stats.model_calls}, "
              f"{sum(stats.new_tokens) / stats.wall_time:.1f} tokens/s")


if __name__ == "__main__":
    main()
