"""Chunked prefill in `decspec serve`'s engine: what a long prompt arriving costs the requests already streaming.

    python -m benchmarks.prefill_chunk [--model smollm2-135m-instruct] [--spec specs/autoregressive.dec]
        [--chunks 0 256 128] [--running 3] [--prompt-tokens 1500] [--max-tokens 48] [--repeats 3] [--threads 2]
        [--out FILE.json] [--markdown FILE.md] [--write]

`--running` greedy requests stream (in the engine, in process: serve.Engine, no HTTP); once each has produced a few
tokens, one request with a prompt of about `--prompt-tokens` tokens arrives. Per chunk size (0: fed whole in one
round, what the engine did before chunked prefill): the running requests' longest gap between two events while
the long prompt is fed (the stall it causes them), their p50 gap over the whole run, the long request's time to
first token, and the run's wall time. The chunk sizes are interleaved over --repeats rounds (rotated order);
each figure is the median over repeats, with the load average recorded.

Prints a table; writes JSON and markdown only where --out / --markdown say (--write: benchmarks/results/prefill_chunk.json
and docs/prefill_chunk.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import torch

import decspec
from benchmarks.output import ROOT, add_output_args, outputs, write_text
from benchmarks.prompts import CHAT

NO_CHUNK = 1 << 30  # a chunk no prompt reaches: fed whole


def one_run(decoder, chunk: int, running: int, long_ids: list[int], max_tokens: int) -> dict:
    from decspec.serve import Engine

    engine = Engine(decoder, slots=running + 1, context=len(long_ids) + max_tokens + 64, prefill_chunk=chunk or NO_CHUNK)
    try:
        times: list[list[float]] = [[] for _ in range(running)]
        started = threading.Event()
        long_sent: list[float] = []

        ended = [False] * running

        def listener(i):
            def emit(event):
                times[i].append(time.perf_counter())
                ended[i] = event.finish_reason is not None
                if not long_sent and all(len(t) >= 3 or e for t, e in zip(times, ended)):  # each has streamed a while
                    started.set()
            return emit

        t0 = time.perf_counter()
        chat = decoder.tokenizer.chat_template is not None  # an instruct model answers a chat, not a bare question

        def prompt(i: int) -> list[int]:
            text = CHAT[i % len(CHAT)]
            return engine.encode(messages=[{"role": "user", "content": text}]) if chat else engine.encode(text)

        requests = [engine.submit(prompt(i), max_tokens, sampling={"temperature": 0}, emit=listener(i))
                    for i in range(running)]
        assert started.wait(600), "the running requests did not start"
        long_sent.append(time.perf_counter())
        first: list[float] = []
        done = threading.Event()

        def on_long(event):
            if not first and event.tokens:
                first.append(time.perf_counter())
            if event.finish_reason is not None:
                done.set()

        engine.submit(long_ids, 8, sampling={"temperature": 0}, emit=on_long)
        assert done.wait(600), "the long request did not finish"
        while any(r.finish_reason is None for r in requests):
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        fed_until = first[0]
        stall = max([b - a for t in times for a, b in zip(t, t[1:]) if b > long_sent[0] and a < fed_until], default=0.0)
        gaps = [b - a for t in times for a, b in zip(t, t[1:])]
        return {"stall_ms": 1e3 * stall, "p50_gap_ms": 1e3 * statistics.median(gaps),
                "ttft_long_ms": 1e3 * (first[0] - long_sent[0]), "wall_s": wall, "rounds": engine.rounds}
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--spec", default="specs/autoregressive.dec")
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 256, 128])
    ap.add_argument("--running", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=1500)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    add_output_args(ap, ROOT / "benchmarks/results/prefill_chunk.json", ROOT / "docs/prefill_chunk.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from decspec.stdlib.models.registry import load_named

    decoder = decspec.compile(args.spec, models={"target": load_named(args.model)})
    tokenizer = decoder.tokenizer
    text, ids = "", []
    while len(ids) < args.prompt_tokens:
        text += " ".join(CHAT) + "\n"
        ids = tokenizer.encode(text)
    long_ids = ids[: args.prompt_tokens]
    one_run(decoder, 64, args.running, long_ids[:200], 16)  # warm-up (allocator, kernels)
    rows: dict[int, list[dict]] = {c: [] for c in args.chunks}
    loads = []
    for r in range(args.repeats):
        order = args.chunks[r % len(args.chunks):] + args.chunks[: r % len(args.chunks)]
        for c in order:
            loads.append(os.getloadavg()[0])
            rows[c].append(one_run(decoder, c, args.running, long_ids, args.max_tokens))
    table = []
    for c in args.chunks:
        med = {k: statistics.median(x[k] for x in rows[c]) for k in rows[c][0]}
        table.append({"chunk": c or "whole", **med})
    header = "| prefill chunk | running requests' stall (ms) | their p50 gap (ms) | long prompt TTFT (ms) | wall (s) | rounds |"
    lines = [header, "|---|---|---|---|---|---|"]
    lines += [f"| {t['chunk']} | {t['stall_ms']:.0f} | {t['p50_gap_ms']:.1f} | {t['ttft_long_ms']:.0f} | {t['wall_s']:.2f} | "
              f"{t['rounds']:.0f} |" for t in table]
    note = (f"{args.model}, {args.spec}, {args.running} running greedy requests of {args.max_tokens} tokens, one prompt of "
            f"{len(long_ids)} tokens arriving; {args.threads} threads; median of {args.repeats}; load average "
            f"{min(loads):.1f}-{max(loads):.1f}")
    print("\n".join(lines))
    print(note)
    out, doc = outputs(args, ROOT / "benchmarks/results/prefill_chunk.json", ROOT / "docs/prefill_chunk.md")
    if out is not None:
        write_text(out, json.dumps({"rows": table, "runs": {str(c): r for c, r in rows.items()}, "note": note}, indent=1))
    if doc is not None:
        command = "python -m benchmarks.prefill_chunk " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
        write_text(doc, f"# Chunked prefill\n\nProduced by `{command}` on {time.strftime('%Y-%m-%d', time.gmtime())}.\n\n"
                        + "\n".join(lines) + "\n\n" + note + "\n")


if __name__ == "__main__":
    main()
