"""The inductor backend on a GPU, in one short run: compiled rounds, no recompiles, CUDA graphs, tokens/s and MBU.

    python -m benchmarks.gpu_check [--target NAME|DIR] [--specs autoregressive prompt_lookup speculative layerskip]
        [--device cuda] [--dtype bfloat16] [--batch 1] [--new-tokens 128] [--repeats 3]
        [--mode reduce-overhead] [--peak-gbps GB/s] [--out PATH] [--write]

For each spec it compiles the round (`backend="inductor"`, `backend_options={"compile": True, "mode": MODE}`) and
records:
- *graphs*, *graph breaks* (with reasons) of the first generate; *recompiles* over a second call with other prompt
  lengths and a third with another seed (dynamo's `guard_failures` and new graphs): all must be 0 but the graphs;
- *cudagraph skips*: inductor's `cudagraph_skips` counter and the reasons it logged (with mode "reduce-overhead"
  the round should be captured as a CUDA graph: 0 skips);
- *cold s*: the first call (compile included) and *compile s* (`Stats.compile_time`);
- *tok/s*: warm calls' new tokens over their generation time, median over --repeats (each call synchronized);
- *MBU*: model bandwidth utilization, the bytes a round must read (each model call reads its weights once; the
  target's KV cache over the context is added) times the rounds per second, over the device's peak bandwidth
  (--peak-gbps; known for H100/H200/A100 by name). Decoding at batch 1 is bandwidth-bound, so MBU says how close
  a round comes to the hardware's limit (gpt-fast reports the same figure).

The model: --target (a named model already pulled into the cache, or a model directory: nothing is downloaded, a
lent GPU machine reaches no network); by default a random model with SmolLM2-135M's shapes (30 layers, hidden 576,
49,152 tokens), whose speed and MBU are the real model's (the same shapes and arithmetic) but whose drafts are
rarely accepted; speculative specs draft with a random 2-layer model of the same vocabulary (or the target's
shipped draft when it has one). Prompts are random token ids.

`--device cpu --tiny --dynamo-backend eager` runs the same checks in seconds on a CPU (the test suite does, to keep
this script working); its figures mean nothing. Prints a table; writes the JSON with --out, or with --write to
benchmarks/results/gpu_check.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import decspec
from benchmarks.output import add_output_args, markdown_rows, outputs, write_text

ROOT = Path(__file__).resolve().parent.parent
JSON = ROOT / "benchmarks" / "results" / "gpu_check.json"
SPECS = ("autoregressive", "prompt_lookup", "speculative", "layerskip")
PEAK_GBPS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0, "L4": 300.0, "A10": 600.0}  # HBM/GDDR peak, GB/s
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)


def models(args) -> dict[str, torch.nn.Module]:
    """{"target", "draft"} on the device: the named/local target (and its shipped draft), or random ones of the shapes."""
    from decspec.stdlib.models.transformer import Transformer
    from decspec.stdlib.models.transformer_config import TransformerConfig

    dtype = getattr(torch, args.dtype)
    if args.target:
        from decspec.stdlib.models.registry import resolve_model

        target = resolve_model(args.target, dtype=dtype, device=args.device)
        draft = getattr(target, "shipped_draft", None)
    else:
        target = Transformer.random(TransformerConfig(**(TINY if args.tiny else SMOLLM2_135M)), seed=0, dtype=dtype,
                                    device=args.device)
        draft = None
    if draft is None:
        shapes = {**(TINY if args.tiny else SMOLLM2_135M), "num_hidden_layers": 2, "vocab_size": target.vocab_size}
        draft = Transformer.random(TransformerConfig(**shapes), seed=1, dtype=dtype, device=args.device)
    return {"target": target, "draft": draft}


def weight_bytes(model) -> int:
    """Bytes of a model's parameters (tied weights once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def kv_bytes_per_position(model) -> int:
    c = model.config
    return 2 * c.num_hidden_layers * c.kv_heads * c.head_size * torch.finfo(model.dtype).bits // 8


def peak_gbps(args) -> float | None:
    if args.peak_gbps:
        return args.peak_gbps
    if args.device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_GBPS.items() if k in name), None)
    return None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_spec(spec: str, ms: dict, args, peak: float | None) -> dict:
    """One spec: compile, count graphs/breaks/recompiles/cudagraph skips, time warm calls. -> its JSON row."""
    import torch._dynamo
    from torch._dynamo.utils import counters, guard_failures

    torch._dynamo.reset()
    counters.clear()
    guard_failures.clear()
    options = {"compile": True, "mode": args.mode, "dynamo_backend": args.dynamo_backend}
    gen = torch.Generator().manual_seed(0)
    V = ms["target"].vocab_size

    def prompts(length: int) -> list[list[int]]:
        return [torch.randint(3, V, (length + b,), generator=gen).tolist() for b in range(args.batch)]

    kwargs = {"models": ms, "backend": "inductor", "backend_options": options}
    dec = decspec.compile(f"specs/{spec}.dec", **kwargs)
    call = lambda p, seed: dec.generate(p, max_new_tokens=args.new_tokens, seed=seed, eos_token_id=None)
    sync(args.device)
    t0 = time.perf_counter()
    first = call(prompts(args.prompt_length), 0)
    sync(args.device)
    cold = time.perf_counter() - t0
    graphs = counters["stats"]["unique_graphs"]
    breaks = {str(k)[:160]: v for k, v in counters["graph_break"].items()}
    call(prompts(args.prompt_length + 7), 0)  # other prompt lengths, same capacity bucket
    call(prompts(args.prompt_length), 1)  # another seed
    recompiles = max(sum(len(r) for r in guard_failures.values()), counters["stats"]["unique_graphs"] - graphs)
    skips = dict(counters["inductor"]).get("cudagraph_skips", 0)
    rates, rounds, calls = [], [], []
    fixed = prompts(args.prompt_length)
    for _ in range(args.repeats):
        sync(args.device)
        out = call(fixed, 0)
        sync(args.device)
        rates.append(out.stats.tokens_per_second)
        rounds.append(out.stats.rounds / max(out.stats.generation_time, 1e-9))
        calls.append(out.stats.model_calls)
    tps = statistics.median(rates)
    row = {"spec": spec, "graphs": graphs, "graph_breaks": sum(breaks.values()), "break_reasons": breaks,
           "recompiles": recompiles, "cudagraph_skips": skips, "cold_s": round(cold, 2),
           "compile_s": round(first.stats.compile_time, 2), "tokens_per_s": round(tps, 1),
           "mean_accepted": round(out.stats.mean_accepted, 3), "model_calls": calls[-1], "mbu": None}
    # bytes per second: every model call reads its weights, the target's also its KV cache over the context
    seconds = out.stats.generation_time
    if seconds > 0:
        context = args.prompt_length + args.new_tokens / 2
        moved = sum(n * weight_bytes(ms[role]) for role, n in calls[-1].items() if role in ms)
        moved += calls[-1].get("target", 0) * args.batch * context * kv_bytes_per_position(ms["target"])
        row["gbps"] = round(moved / seconds / 1e9, 1)
        row["mbu"] = None if peak is None else round(moved / seconds / 1e9 / peak, 3)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", help="a pulled named model or a model directory (default: random, SmolLM2-135M's shapes)")
    ap.add_argument("--specs", nargs="+", default=list(SPECS), help="specs/NAME.dec to check")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                    help="default: bfloat16 on CUDA, float32 on a CPU")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-length", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", default="reduce-overhead", help="torch.compile mode (reduce-overhead: CUDA graphs)")
    ap.add_argument("--dynamo-backend", default="inductor")
    ap.add_argument("--peak-gbps", type=float, default=None, help="the device's peak memory bandwidth, GB/s")
    ap.add_argument("--tiny", action="store_true", help="tiny random models (the CPU self-test)")
    add_output_args(ap, JSON)
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); use --device cpu --tiny for the "
              "self-test", file=sys.stderr)
        return 2
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    torch.manual_seed(0)
    ms = models(args)
    peak = peak_gbps(args)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"gpu_check: {device_name}, torch {torch.__version__}, {args.dtype}, batch {args.batch}, mode {args.mode}, "
          f"target {args.target or 'random (SmolLM2-135M shapes)' if not args.tiny else 'tiny random'}, "
          f"{weight_bytes(ms['target']) / 1e6:.0f} MB of weights", flush=True)
    rows = []
    for spec in args.specs:
        try:
            row = check_spec(spec, ms, args, peak)
        except Exception as e:  # one spec failing must not hide the others' figures
            row = {"spec": spec, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = ["spec", "graphs", "graph breaks", "recompiles", "cudagraph skips", "cold s", "compile s", "tok/s", "GB/s", "MBU"]
    cells = [[r["spec"], *(["error: " + r["error"]] + [""] * 9 if "error" in r else
              [str(r["graphs"]), str(r["graph_breaks"]), str(r["recompiles"]), str(r["cudagraph_skips"]), str(r["cold_s"]),
               str(r["compile_s"]), str(r["tokens_per_s"]), str(r.get("gbps")), str(r["mbu"])])][:10] for r in rows]
    print(markdown_rows(cols, cells))
    out, _ = outputs(args, JSON)
    if out is not None:
        meta = {"command": "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "device": device_name, "torch": torch.__version__, "peak_gbps": peak, **{k: v for k, v in vars(args).items()
                                                                                       if k not in ("out", "write")}}
        write_text(out, json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    failed = [r["spec"] for r in rows if "error" in r or r["graph_breaks"] or r["recompiles"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
