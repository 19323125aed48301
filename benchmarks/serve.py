"""`decspec serve` under load: throughput and time to first token at 1, 4 and 16 concurrent streaming clients (the
stock `openai` client over HTTP on 127.0.0.1), against the same requests as plain sequential `Decoder.stream` calls.

    python -m benchmarks.serve [--model smollm2-135m-instruct] [--spec specs/autoregressive.dec] [--clients 1 4 16]
        [--requests 16] [--max-tokens 32] [--slots 16] [--repeats 2] [--threads 2] [--out FILE.json] [--markdown FILE.md]

Every request is a chat prompt of benchmarks/prompts.py (cycled), greedy (temperature 0), streamed, up to
--max-tokens tokens (EOS ends a request early, as it would in an app: throughput counts the tokens produced).
A level of c clients sends --requests requests in all, each client one after another, so at most c are in flight.
"Sequential" runs the same requests one by one in process, with no server: what an app without batching does.
TTFT is the time from sending a request to its first content chunk. Levels and the sequential row are interleaved
over --repeats rounds (rotated order); each figure is the median over repeats, with the load average recorded.

Prints a table; writes JSON and markdown only where --out / --markdown say.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

import torch

import decspec
from benchmarks.prompts import CHAT


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def run_level(url: str, prompts: list[str], clients: int, max_tokens: int, chat: bool) -> dict:
    import openai

    queue = list(enumerate(prompts))
    lock = threading.Lock()
    ttft, tokens, errors = [], [], []

    def client():
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        while True:
            with lock:
                if not queue:
                    return
                _, prompt = queue.pop(0)
            t0 = time.perf_counter()
            first = None
            try:
                kw = dict(model="bench", max_tokens=max_tokens, temperature=0, stream=True,
                          stream_options={"include_usage": True})
                if chat:
                    stream = c.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kw)
                else:
                    stream = c.completions.create(prompt=prompt, **kw)
                for chunk in stream:
                    text = chunk.choices[0].delta.content if chat and chunk.choices else chunk.choices[0].text if chunk.choices else ""
                    if first is None and text:
                        first = time.perf_counter() - t0
                    if chunk.usage is not None:
                        with lock:
                            tokens.append(chunk.usage.completion_tokens)
            except Exception as e:  # noqa: BLE001 - counted and shown
                errors.append(repr(e)[:200])
            with lock:
                ttft.append(first if first is not None else time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return summary(wall, sum(tokens), ttft, errors)


def run_sequential(decoder, prompts: list[str], max_tokens: int, chat: bool) -> dict:
    ttft, tokens = [], 0
    t0 = time.perf_counter()
    for prompt in prompts:
        start, first = time.perf_counter(), None
        given = {"messages": [{"role": "user", "content": prompt}]} if chat else {"input_ids": prompt}
        stream = decoder.stream(**given, max_new_tokens=max_tokens, temperature=0)
        for delta in stream:
            if first is None and delta.text:
                first = time.perf_counter() - start
        tokens += len(stream.result.tokens[0])
        ttft.append(first if first is not None else time.perf_counter() - start)
    wall = time.perf_counter() - t0
    return summary(wall, tokens, ttft, [])


def summary(wall: float, tokens: int, ttft: list[float], errors: list[str]) -> dict:
    """One row's figures: throughput over the whole level, and the spread of its times to first token."""
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "ttft_p50_s": percentile(ttft, 0.5),
            "ttft_p99_s": percentile(ttft, 0.99), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a named model (decspec pull NAME); default: the shipped reference pair")
    ap.add_argument("--spec", default="specs/autoregressive.dec")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=16, help="requests per level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--markdown", type=Path, help="write the table as markdown here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    models = {}
    if args.model:
        from decspec.stdlib.models.registry import load_named

        models["target"] = load_named(args.model)
    decoder = decspec.compile(args.spec, models=models)
    chat = decoder.tokenizer.chat_template is not None  # else (the reference pair) the question as a plain prompt
    prompts = [CHAT[i % len(CHAT)] for i in range(args.requests)]
    from decspec.serve import Background

    server = Background(decoder, slots=args.slots, context=args.context, name="bench")
    url = server.url + "/v1"
    rows = ["sequential"] + [f"{c} clients" for c in args.clients]
    run_level(url, prompts[:2], 2, 4, chat)  # warm-up: the server's first rounds, the client's imports
    run_sequential(decoder, prompts[:1], 4, chat)
    results: dict[str, list[dict]] = {r: [] for r in rows}
    loads = [os.getloadavg()[0]]
    for rep in range(args.repeats):
        order = rows[rep % len(rows):] + rows[:rep % len(rows)]
        for row in order:
            if row == "sequential":
                out = run_sequential(decoder, prompts, args.max_tokens, chat)
            else:
                out = run_level(url, prompts, int(row.split()[0]), args.max_tokens, chat)
            results[row].append(out)
            print(f"repeat {rep + 1} {row:>12}: {out['tokens_per_s']:6.1f} tok/s, TTFT p50 {1e3 * out['ttft_p50_s']:7.0f} ms "
                  f"p99 {1e3 * out['ttft_p99_s']:7.0f} ms, {out['tokens']} tokens, {len(out['errors'])} errors", flush=True)
    loads.append(os.getloadavg()[0])
    server.stop()
    base = statistics.median(r["tokens_per_s"] for r in results["sequential"])
    table = []
    for row in rows:
        runs = results[row]
        table.append({"row": row, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
                      "ttft_p50_ms": 1e3 * statistics.median(r["ttft_p50_s"] for r in runs),
                      "ttft_p99_ms": 1e3 * statistics.median(r["ttft_p99_s"] for r in runs),
                      "errors": sum(len(r["errors"]) for r in runs)})
        table[-1]["vs_sequential"] = table[-1]["tokens_per_s"] / base
    command = "python -m benchmarks.serve " + " ".join(os.sys.argv[1:])
    lines = [f"Command: `{command}`. Model: {args.model or 'reference'}; spec {args.spec}; {args.requests} chat requests "
             f"per row, up to {args.max_tokens} tokens each, greedy, streamed; {args.slots} slots; {args.threads} threads; "
             f"load average {loads[0]:.1f} -> {loads[1]:.1f}; medians over {args.repeats} interleaved repeats.", "",
             "| clients | tokens/s | × sequential | TTFT p50 ms | TTFT p99 ms | errors |", "|---|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['row']} | {t['tokens_per_s']:.1f} | {t['vs_sequential']:.2f} | {t['ttft_p50_ms']:.0f} | "
                     f"{t['ttft_p99_ms']:.0f} | {t['errors']} |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps({"command": command, "loads": loads, "table": table, "runs": results}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
