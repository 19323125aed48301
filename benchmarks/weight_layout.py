"""Row-major against column-major projection weights in the built-in transformer, interleaved.

    python -m benchmarks.weight_layout [--model smollm2-135m-instruct] [--widths 1 5 11] [--repeats 6] [--threads 2]
        [--out PATH] [--write]

The built-in Transformer stores every projection weight [out, in] column-major (stdlib/models/
transformer.py `column_major`): same values, only strides differ. This measures forward steps per
second of one model in each layout, for steps of `width` tokens after a 59-token prefix (1: plain
decoding; k+1: a verification), in turns (the order flips every repeat), and checks the logits are
identical. Prints the figures; writes them as JSON only to --out PATH, or with --write to
benchmarks/results/weight_layout.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.output import add_output_args, outputs, write_text

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "weight_layout.json"


def steps_per_second(model, width: int, n: int = 12) -> float:
    cache = model.new_cache(1, 256)
    model.forward(torch.arange(1, 60)[None], cache)
    t0 = time.perf_counter()
    for _ in range(n):
        cache.rollback(torch.tensor([59]))
        model.forward(torch.full((1, width), 5), cache)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 5, 11])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    add_output_args(ap, OUT)
    args = ap.parse_args(argv)
    out, _ = outputs(args, OUT)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    from decspec.stdlib.models.pretrained import load_transformer
    from decspec.stdlib.models.registry import pull

    path = pull(args.model)
    col = load_transformer(path)
    row = load_transformer(path)
    for mod in row.modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
            mod.weight = torch.nn.Parameter(mod.weight.contiguous(), requires_grad=False)
    if row.config.tie_word_embeddings:
        row.lm_head.weight = row.model.embed_tokens.weight
    x = torch.randint(0, col.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    same = torch.equal(col.forward(x, col.new_cache(1, 64)).logits, row.forward(x, row.new_cache(1, 64)).logits)
    load0 = os.getloadavg()
    res: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.repeats):
        for w in args.widths:
            pair = (("row", row), ("column", col)) if rep % 2 else (("column", col), ("row", row))
            for name, m in pair:
                res.setdefault((name, w), []).append(steps_per_second(m, w))
    rows = []
    for w in args.widths:
        r, c = statistics.median(res[("row", w)]), statistics.median(res[("column", w)])
        rows.append({"width": w, "row_major_steps_per_s": r, "column_major_steps_per_s": c, "ratio": c / r})
        print(f"width {w:>2}: row-major {r:5.1f} steps/s, column-major {c:5.1f} steps/s, ratio {c / r:.2f}")
    print(f"logits identical: {same}; load average {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    if out:
        write_text(out, json.dumps({"command": "python -m benchmarks.weight_layout " + " ".join(sys.argv[1:] if argv is None else argv), "model": args.model,
                                    "threads": args.threads, "repeats": args.repeats, "identical_logits": same,
                                    "load_average": [load0[0], os.getloadavg()[0]], "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
