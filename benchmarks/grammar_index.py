"""Grammar index cost (issue 7): build time, per-call mask()/next_state() time and memory for a JSON schema
with 5 properties, over the shipped 4096-token vocabulary and over a synthetic 32k one.

    python -m benchmarks.grammar_index [--calls 1000] [--out PATH] [--write]

Builds bypass the disk cache (`cache=False`). "jit load" is the first index build in the process, which
loads (or compiles) the numba kernel. The 32k vocabulary is the shipped one plus 28k tokens made by
joining two random shipped tokens (BPE-like merges), so it shows how size scales, not a real tokenizer.
Prints the figures; writes them as JSON only to --out PATH, or with --write to benchmarks/results/grammar_index.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.output import add_output_args, outputs, write_text

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "grammar_index.json"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer"},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 4},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "active"],
}


def per_call_us(fn, calls: int) -> dict[str, float]:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(1e6 * (time.perf_counter() - t0))
    times.sort()
    return {"mean_us": statistics.fmean(times), "p50_us": times[len(times) // 2], "p99_us": times[int(0.99 * len(times)) - 1],
            "max_us": times[-1]}


def measure(name: str, vocab: list, eos_id: int, calls: int) -> dict:
    from decspec.stdlib.grammars import schema_to_dfa
    from decspec.stdlib.grammars.index import TokenIndex

    t0 = time.perf_counter()
    dfa = schema_to_dfa(SCHEMA)
    regex_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = TokenIndex.build(dfa, vocab, eos_id)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    states = rng.integers(0, index.num_states, size=calls)
    it = iter(states.tolist() * 2)
    mask = per_call_us(lambda: index.mask([next(it)]), calls)
    pairs = [(s, index.allowed(s)) for s in states[:calls].tolist()]
    picks = iter([(s, int(rng.choice(a))) for s, a in pairs] * 2)

    def step():
        s, t = next(picks)
        index.next_state([s], [t])

    nxt = per_call_us(step, calls)
    allowed_pairs = int(sum(len(index.allowed(s)) for s in range(index.num_states)))
    v, s = len(vocab), index.num_states
    return {
        "vocab": name, "vocab_size": v, "dfa_states": dfa.num_states, "index_states": s,
        "regex_to_dfa_s": regex_s, "index_build_s": build_s, "mask_batch1": mask, "next_state_batch1": nxt,
        "index_bytes": index.nbytes, "mask_bytes": int(index.words.nbytes), "allowed_pairs": allowed_pairs,
        "alternative_csr_next_bytes": 8 * allowed_pairs, "alternative_dense_next_bytes": 4 * s * v,
    }


def synthetic_vocab(base: list, size: int) -> list:
    rng = random.Random(0)
    plain = [t for t in base if t]
    seen, out = set(base), list(base)
    while len(out) < size:
        t = rng.choice(plain) + rng.choice(plain)
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1000)
    add_output_args(ap, OUT)
    args = ap.parse_args()
    out, _ = outputs(args, OUT)
    from decspec.stdlib.grammars import compile_regex, token_bytes
    from decspec.stdlib.grammars.index import TokenIndex
    from decspec.stdlib.models.pretrained import REFERENCE
    from decspec.stdlib.models.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(REFERENCE / "target")
    vocab = token_bytes(tokenizer)
    t0 = time.perf_counter()
    TokenIndex.build(compile_regex("a"), [b"a"], None)
    jit_s = time.perf_counter() - t0
    rows = [measure("shipped 4096", vocab, tokenizer.eos_token_id, args.calls),
            measure("synthetic 32k", synthetic_vocab(vocab, 32_000), tokenizer.eos_token_id, args.calls)]
    print(f"jit load (first build in the process): {1000 * jit_s:.0f} ms")
    for r in rows:
        print(f"{r['vocab']}: DFA {r['dfa_states']} states ({1000 * r['regex_to_dfa_s']:.0f} ms), index {r['index_states']} "
              f"states built in {1000 * r['index_build_s']:.0f} ms, {r['index_bytes'] / 2**20:.2f} MiB "
              f"(a CSR next table would be {r['alternative_csr_next_bytes'] / 2**20:.1f} MiB, dense int32 "
              f"{r['alternative_dense_next_bytes'] / 2**20:.1f} MiB)")
        for key in ("mask_batch1", "next_state_batch1"):
            m = r[key]
            print(f"  {key}: mean {m['mean_us']:.1f} us, p50 {m['p50_us']:.1f} us, p99 {m['p99_us']:.1f} us, max {m['max_us']:.0f} us over {args.calls} calls")
    if out:
        write_text(out, json.dumps({"schema": SCHEMA, "calls": args.calls, "jit_load_s": jit_s, "machine": platform.processor()
                                    or platform.machine(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
