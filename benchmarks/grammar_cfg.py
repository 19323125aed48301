"""Lark CFG matcher cost (issue 7): the JSON grammar over the shipped 4096-token vocabulary.

    python -m benchmarks.grammar_cfg [--tokens 200] [--seeds 3] [--out PATH] [--write]

Two walks, each on a fresh matcher (nothing cached yet, the numba kernel already loaded):
  * greedy: `--tokens` steps of argmax over random logits under the mask, EOS left out (seeds 0..--seeds-1);
  * document: the tokenizer's own tokens of a nested JSON document, fed in order (teacher forcing).
Each step times `mask([state])` and `next_state`; a mask call is "first visit" when its state had no
cached mask yet (the vocabulary walk runs) and "cached" otherwise. Prints the times; writes them as JSON only
to --out PATH, or with --write to benchmarks/results/grammar_cfg.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.output import add_output_args, outputs, write_text

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "grammar_cfg.json"
DOCUMENT = {
    "name": "decspec", "version": [0, 1, 0], "ok": True, "ratio": -0.125e-3, "owner": None,
    "tags": ["grammar", "lark", "json", "caf\u00e9 \"quoted\"\n"],
    "nested": {"a": [{"b": [1, 2, {"c": "d"}]}, [], {}], "depth": {"x": {"y": {"z": 42}}}},
}


def summary(times_us: list[float]) -> dict[str, float]:
    if not times_us:
        return {"count": 0}
    t = sorted(times_us)
    return {"count": len(t), "mean_us": statistics.fmean(t), "p50_us": t[len(t) // 2],
            "p99_us": t[min(len(t) - 1, int(0.99 * len(t)))], "max_us": t[-1]}


def timed_walk(matcher, pick) -> dict:
    """Walk until `pick(step, state, mask)` returns None or EOS; time each mask and next_state call."""
    first, cached, steps = [], [], []
    state, step = matcher.start, 0
    while True:
        new = state not in matcher.masks
        t0 = time.perf_counter()
        mask = matcher.mask([state])[0]
        (first if new else cached).append(1e6 * (time.perf_counter() - t0))
        token = pick(step, state, mask)
        if token is None or token == matcher.eos_id:
            break
        t0 = time.perf_counter()
        state = int(matcher.next_state([state], [token])[0])
        steps.append(1e6 * (time.perf_counter() - t0))
        assert state >= 0
        step += 1
    return {"tokens": step, "mask_all": summary(first + cached), "mask_first_visit": summary(first),
            "mask_cached": summary(cached), "next_state": summary(steps), "states": matcher.num_states,
            "masks_cached": len(matcher.masks)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=3)
    add_output_args(ap, OUT)
    args = ap.parse_args()
    out, _ = outputs(args, OUT)
    from decspec.stdlib.grammars import JSON_GRAMMAR, CFGMatcher, token_bytes
    from decspec.stdlib.models.pretrained import REFERENCE
    from decspec.stdlib.models.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(REFERENCE / "target")
    vocab, eos = token_bytes(tokenizer), tokenizer.eos_token_id
    t0 = time.perf_counter()
    CFGMatcher.build('start: "a"', [b"a"], None)  # loads Lark and the numba kernel
    warmup_s = time.perf_counter() - t0
    build_s, rows = [], []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        matcher = CFGMatcher.build(JSON_GRAMMAR, vocab, eos)
        build_s.append(time.perf_counter() - t0)
        rng = torch.Generator().manual_seed(seed)

        def greedy(step, state, mask):
            if step >= args.tokens:
                return None
            logits = torch.randn(len(vocab), generator=rng).masked_fill(~mask, float("-inf"))  # [V]
            logits[eos] = float("-inf")  # the walk goes on for --tokens steps
            return int(logits.argmax())

        rows.append({"walk": f"greedy seed {seed}", **timed_walk(matcher, greedy)})
    ids = tokenizer.encode(json.dumps(DOCUMENT, indent=2, ensure_ascii=False))
    matcher = CFGMatcher.build(JSON_GRAMMAR, vocab, eos)
    rows.append({"walk": f"document ({len(ids)} tokens)", **timed_walk(matcher, lambda step, s, m: ids[step] if step < len(ids) else eos)})
    print(f"warm-up (Lark import, numba kernel load): {1000 * warmup_s:.0f} ms; JSON matcher build (start mask included): "
          f"{1000 * statistics.fmean(build_s):.0f} ms")
    for r in rows:
        print(f"{r['walk']}: {r['tokens']} tokens, {r['states']} states interned, {r['masks_cached']} masks")
        for key in ("mask_all", "mask_first_visit", "mask_cached", "next_state"):
            m = r[key]
            if m["count"]:
                print(f"  {key:16s} n={m['count']:4d}  mean {m['mean_us']:8.1f} us  p50 {m['p50_us']:8.1f} us  "
                      f"p99 {m['p99_us']:8.1f} us  max {m['max_us']:8.1f} us")
    if out:
        write_text(out, json.dumps({"grammar": "json (stdlib/grammars/json.lark)", "vocab_size": len(vocab), "tokens": args.tokens,
                                    "warmup_s": warmup_s, "build_s": build_s, "machine": platform.processor() or platform.machine(),
                                    "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
