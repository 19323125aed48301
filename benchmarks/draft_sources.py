"""Adaptive and staged draft sources on the shipped reference models (6-layer target, 1-layer draft).

    python -m benchmarks.draft_sources dynamic_exit [--new-tokens 96] [--reps 2]
    python -m benchmarks.draft_sources staged [--new-tokens 96] [--reps 2]
    python -m benchmarks.draft_sources dynamic_skip [--new-tokens 96] [--reps 2]

- dynamic_exit: `specs/dynamic_exit.dec` (policy "del" / "ucb", layers [2, 3, 4] and [1, 2, 3]) against
  `specs/layerskip.dec` at fixed layers 1..4, k = 4, at temperature 0 and 1: mean accepted drafts and
  tokens per round, the layers each policy played (rounds per layer), model calls, tokens/s.
- dynamic_skip: `specs/swift_dynamic.dec` (policy "del" / "ucb" over the skip sets [1 2], [2 3], [1 3], [1 2 3],
  and "search" over every 2 of layers 1..4, pool 3) against `specs/swift.dec` at those fixed skip sets, k = 4,
  at temperature 0 and 1 (the same columns as dynamic_exit; "layers played" are the skip sets).
- staged: `specs/staged.dec` (inner lookup, several k / inner) against `specs/speculative.dec`, at
  temperature 0 and 0.8: draft calls per committed token, tokens per round, tokens/s.

Three fixed prompts, seeds 0..2, one row each. Configurations run interleaved `--reps` times and
tokens/s is the fastest repetition's (token counts and calls are the same every repetition: the seed
fixes them); wall-clock figures depend on the machine's load.
"""
from __future__ import annotations

import argparse
import collections

import torch

import decspec
from decspec.stdlib import dynamic_exit as de
from decspec.stdlib.models.pretrained import reference_models

PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n\ndef main():", "class Stack:\n    def __init__(self):"]


def configs(which: str) -> list[tuple[str, dict]]:
    out = []
    if which == "dynamic_exit":
        for t in (0.0, 1.0):
            out += [("specs/layerskip.dec", dict(layer=layer, temperature=t)) for layer in (1, 2, 3, 4)]
            out += [("specs/dynamic_exit.dec", dict(policy=p, layers=ls, temperature=t)) for p in ("del", "ucb") for ls in ([2, 3, 4], [1, 2, 3])]
    elif which == "dynamic_skip":
        sets = ["1 2", "2 3", "1 3", "1 2 3"]
        for t in (0.0, 1.0):
            out += [("specs/swift.dec", dict(skip=[int(i) for i in s.split()], temperature=t)) for s in sets]
            out += [("specs/swift_dynamic.dec", dict(policy=p, skips=sets, temperature=t)) for p in ("del", "ucb")]
            out += [("specs/swift_dynamic.dec", dict(policy="search", skip=2, layers=[1, 2, 3, 4], pool=3, temperature=t))]
    else:
        for t in (0.0, 0.8):
            out += [("specs/speculative.dec", dict(k=k, temperature=t)) for k in (4, 8)]
            out += [("specs/staged.dec", dict(k=k, inner=j, temperature=t)) for k, j in ((4, 2), (4, 4), (8, 4))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=("dynamic_exit", "staged", "dynamic_skip"))
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = reference_models()
    played: collections.Counter = collections.Counter()
    update = de.ExitPolicy.update

    def counting(self, state, accepted, drafted):  # the layer each row played this round
        played.update(self.arms[a] for a in self.cap(state).tolist())
        return update(self, state, accepted, drafted)

    de.ExitPolicy.update = counting
    search_update = de.SkipSearch.update

    def counting_search(self, state, accepted, drafted):
        played.update(self.arms[a] for a in self.cap(state).tolist())
        return search_update(self, state, accepted, drafted)

    de.SkipSearch.update = counting_search
    todo = configs(args.which)
    decoders = [decspec.compile(path, models=models, overrides=over) for path, over in todo]
    best: dict[int, tuple] = {}
    for _ in range(args.reps):
        for i, dec in enumerate(decoders):
            played.clear()
            rounds = accepted = tokens = 0
            wall = 0.0
            calls: collections.Counter = collections.Counter()
            for seed, prompt in enumerate(PROMPTS):
                s = dec.generate([prompt], max_new_tokens=args.new_tokens, seed=seed).stats
                rounds += s.rounds
                accepted += sum(a for r in s.accepted for a in r)
                tokens += sum(s.new_tokens)
                wall += s.wall_time
                calls.update(s.model_calls)
            row = (tokens / wall, accepted / rounds, tokens / rounds, dict(calls), calls["draft"] / tokens, dict(sorted(played.items())))
            if i not in best or row[0] > best[i][0]:
                best[i] = row
    for i, (path, over) in enumerate(todo):
        tps, acc, tpr, calls, per_token, arms = best[i]
        extra = f"draft calls/token={per_token:.2f}" if args.which == "staged" else f"layers played={arms}"
        print(f"{path.split('/')[-1]:17s} {str(over):55s} accepted/round={acc:.2f} tokens/round={tpr:.2f} {extra} "
              f"tok/s={tps:.1f} calls={calls}")


if __name__ == "__main__":
    main()
