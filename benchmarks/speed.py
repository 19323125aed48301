"""Decoding speed of decspec against Hugging Face `generate`, on the shipped weights (issue 4, first version).

    python -m benchmarks.speed [--new-tokens 64] [--prompts 8] [--batch 1 8] [--temperatures 0] [--repeats 3] [--k 4] [--layer 3]
        [--out PATH] [--doc PATH] [--write]

Prompts are the held-out standard-library prompts of benchmarks/acceptance.py. At each batch size B
the prompts run in ceil(prompts / B) calls of B rows (HF pads on the left); tokens/s is all new
tokens over the summed wall time of the calls, the median of `--repeats` timed repeats after one
untimed warm-up (the warm-up also compiles the inductor rows). Every row generates exactly
`--new-tokens` tokens (no EOS stop on either side).

Methods (k = `--k` drafted tokens per round):
- autoregressive: decspec eager, decspec inductor (torch.compile'd round), HF `generate` (greedy, KV cache);
- speculative, 1-layer draft model: decspec `specs/speculative.dec` vs HF assisted generation
  (`assistant_model=`, constant k, confidence threshold off; HF supports batch 1 only);
- self-speculative early exit: decspec with `EarlyExit(target, layer=L)` vs HF `assistant_early_exit=L`;
- prompt lookup: decspec `specs/prompt_lookup.dec` (ngram 2, like HF's default) vs HF `prompt_lookup_num_tokens=k`.

Per row: tokens/s, mean accepted drafts per round, acceptance rate α, speedup over the same
backend's autoregressive row, ratio to HF's corresponding method, and for speculative rows the
draft/target cost ratio c (one draft forward of 1 token / one target forward of k+1 tokens, at that
batch size, after a prompt-length prefix) with the ideal speedup (1 - α^(k+1)) / ((1 - α)(k c + 1))
(Leviathan et al. 2023) and efficiency = measured speedup / ideal (prompt lookup: c = 0). Framework
overhead (decspec rows) = 1 - model time / wall time, where model time counts every model call of
the row at its standalone median forward time, measured just before and just after the row's
repeats (one prompt prefill per generate call, then target steps of k+1 tokens, or 1 when
autoregressive, and draft steps of 1 token; compiled forward_at for inductor rows): an estimate, as a round's forwards in the benchmark differ a little from the
standalone shapes. At temperature 0 each row's tokens are compared with HF greedy autoregressive at
batch 1 (fraction of prompts identical).

Prints the table; writes the JSON (and, with matplotlib, a plot next to it) and the page only where --out / --doc
say, or with --write to benchmarks/results/speed.json (speed.png) and docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

import decspec
from benchmarks.acceptance import heldout_prompts
from benchmarks.output import add_output_args, outputs, write_text
from decspec.stdlib.models.pretrained import REFERENCE, reference_models
from decspec.stdlib.models.skip_search import ideal_speedup  # Leviathan et al.'s formula, one definition
from decspec.stdlib.models.views import EarlyExit

ROOT = Path(__file__).resolve().parent.parent
OUT, DOC = ROOT / "benchmarks" / "results" / "speed.json", ROOT / "docs" / "benchmarks.md"
SPECS = ROOT / "specs"


def chunks(xs: list, b: int) -> list[list]:
    return [xs[i : i + b] for i in range(0, len(xs), b)]


# ---------------------------------------------------------------- decspec

def decspec_runner(spec: str, backend: str, models: dict, overrides: dict, batch: int):
    dec = decspec.compile(SPECS / spec, backend=backend, **models, **overrides)
    if backend == "inductor":
        dec.backend_options = {"compile": True}
    return decoder_runner(dec, batch)


def decoder_runner(dec, batch: int):
    """run(ids, new_tokens, seed) -> (seconds, tokens, info): `dec` over the prompts in calls of `batch` rows;
    info: mean accepted drafts per row-round, acceptance rate, their sums, row-rounds, model calls, generate calls."""

    def run(ids: list[list[int]], new_tokens: int, seed: int) -> tuple[float, list[list[int]], dict]:
        t_total, tokens, acc, drafted, rounds, calls = 0.0, [], 0, 0, 0, {}
        for part in chunks(ids, batch):
            t0 = time.perf_counter()
            res = dec.generate(part, max_new_tokens=new_tokens, seed=seed, eos_token_id=None)
            t_total += time.perf_counter() - t0
            tokens += [list(map(int, row)) for row in res.tokens]
            s = res.stats
            acc += sum(a for r in s.accepted for a in r)
            drafted += sum(d for r in s.drafted for d in r)
            rounds += sum(len(r) for r in s.accepted)  # row-rounds
            for role, n in s.model_calls.items():
                calls[role] = calls.get(role, 0) + n
        info = {"mean_accepted": acc / rounds if rounds else 0.0, "acceptance_rate": acc / drafted if drafted else None,
                "accepted": acc, "drafted": drafted, "rounds": rounds, "model_calls": calls, "generate_calls": len(chunks(ids, batch))}
        return t_total, tokens, info

    return run


# ---------------------------------------------------------------- Hugging Face

def hf_runner(hf_target, batch: int, extra: dict, temperature: float):
    def run(ids: list[list[int]], new_tokens: int, seed: int) -> tuple[float, list[list[int]], dict]:
        t_total, tokens = 0.0, []
        for part in chunks(ids, batch):
            width = max(map(len, part))
            x = torch.tensor([[0] * (width - len(p)) + p for p in part])  # left padding (pad = BOS = EOS = 0, masked)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part])
            kw = dict(do_sample=False) if temperature == 0 else dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            out = hf_target.generate(x, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     use_cache=True, pad_token_id=0, **kw, **extra)
            t_total += time.perf_counter() - t0
            tokens += out[:, width:].tolist()
        return t_total, tokens, {"mean_accepted": None, "acceptance_rate": None}

    return run


def hf_models():
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(REFERENCE / "target", dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(REFERENCE / "draft", dtype=torch.float32).eval()
    for m in (target, draft):  # generate exactly new_tokens: no EOS (= BOS = 0) stop
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
    return target, draft


# ---------------------------------------------------------------- cost ratio c

def forward_time(model, batch: int, prompt_len: int, width: int, reps: int = 20) -> float:
    """Median seconds of one forward of `width` tokens per row after a prompt_len-token prefix."""
    cache = model.new_cache(batch, prompt_len + width + 8)
    model.forward(torch.randint(1, 4000, (batch, prompt_len)), cache)
    x = torch.randint(1, 4000, (batch, width))
    times = []
    for _ in range(reps):
        cache.rollback(torch.full((batch,), prompt_len))
        t0 = time.perf_counter()
        model.forward(x, cache)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Forwards:
    """Standalone forward medians, measured again for every row, right around its timed repeats, so a
    row's model time and its wall time see the same machine load (this CPU is shared and noisy)."""

    def __init__(self, prompt_len: int):
        self.prompt_len = prompt_len
        self.compiled: dict = {}  # (model id, batch, width) -> (compiled step, x, start)

    def step(self, model, batch: int, width: int, compiled: bool, reps: int = 20) -> float:
        """Median seconds of one forward of `width` tokens per row after a prompt_len-token prefix;
        compiled: the static-shape step the inductor backend compiles (forward_at under torch.compile)."""
        if not compiled:
            return forward_time(model, batch, self.prompt_len, width, reps)
        key = (id(model), batch, width)
        if key not in self.compiled:
            cache = model.new_cache(batch, self.prompt_len + width + 8)
            model.forward(torch.randint(1, 4000, (batch, self.prompt_len)), cache)
            fn = torch.compile(lambda x, start: model.forward_at(x, cache, start).logits, dynamic=False)
            x, start = torch.randint(1, 4000, (batch, width)), torch.full((batch,), self.prompt_len)
            for _ in range(3):
                fn(x, start)
            self.compiled[key] = (fn, x, start)
        fn, x, start = self.compiled[key]
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(x, start)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def prefill(self, model, batch: int, reps: int = 5) -> float:
        """Median seconds to feed a prompt_len-token prompt into an empty cache (both backends prefill uncompiled)."""
        x = torch.randint(1, 4000, (batch, self.prompt_len))
        times = []
        for _ in range(reps):
            cache = model.new_cache(batch, self.prompt_len + 8)
            t0 = time.perf_counter()
            model.forward(x, cache)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def framework_overhead(row: dict, steps: dict, seconds: float) -> float | None:
    """1 - model time / wall time: model time = per role, one prefill per generate call plus every
    other call at its step width (target: k+1 tokens when verifying, 1 when autoregressive; draft: 1),
    each at its standalone median (compiled for inductor rows)."""
    calls, n = row.get("model_calls"), row.get("generate_calls")
    if not calls or not n:
        return None
    model_time = sum(n * steps[role]["prefill"] + (c - n) * steps[role]["step"] for role, c in calls.items())
    return 1.0 - model_time / seconds


# ---------------------------------------------------------------- main

def measure(args) -> dict:
    torch.manual_seed(0)
    models = reference_models()
    target, draft = models["target"], models["draft"]
    early = EarlyExit(target, layer=args.layer)
    tok = target.tokenizer
    ids = [tok.encode_prompt(p) for p in heldout_prompts(args.prompts)]
    hf_target, hf_draft = hf_models()
    k, L = args.k, args.layer
    prompt_len = round(statistics.mean(map(len, ids)))

    forwards = Forwards(prompt_len)
    roles = {"target": target, "draft model": draft, f"early exit, layer {L}": early}
    cost = {}
    for b in args.batch:
        t_target = forwards.step(target, b, k + 1, compiled=False)
        cost[b] = {name: forwards.step(m, b, 1, compiled=False) / t_target for name, m in list(roles.items())[1:]}
        print(f"batch {b}: c(draft model) = {cost[b]['draft model']:.3f}, c(early exit {L}) = {cost[b][f'early exit, layer {L}']:.3f}", flush=True)

    def step_costs(b: int, impl: str, method: str, dname: str | None) -> dict:
        """Per role: seconds of its prefill and of one of its steps in this row, measured now."""
        compiled = impl == "decspec inductor"
        width = 1 if method == "autoregressive" else k + 1
        out = {"target": {"prefill": forwards.prefill(target, b), "step": forwards.step(target, b, width, compiled)}}
        if dname is not None:
            out["draft"] = {"prefill": forwards.prefill(roles[dname], b), "step": forwards.step(roles[dname], b, 1, compiled)}
        return out

    rows: list[dict] = []
    reference_tokens: list[list[int]] | None = None
    for temperature in args.temperatures:
        sampling = {"temperature": temperature, "top_p": 1.0}
        if temperature == 0 and len(args.temperatures) > 1:
            reference_tokens = None
        hf_sampling_ok = True
        for b in args.batch:
            methods = []  # (method, impl, draft_name, make_runner)
            for backend in ("eager", "inductor"):
                methods.append(("autoregressive", f"decspec {backend}", None,
                                lambda backend=backend: decspec_runner("autoregressive.dec", backend, {"target": target}, sampling, b)))
            methods.append(("autoregressive", "HF", None, lambda: hf_runner(hf_target, b, {}, temperature)))
            for method, dname, dmodel, hf_extra in (
                ("draft model", "draft model", draft, {"assistant_model": hf_draft, "num_assistant_tokens": k,
                                                       "num_assistant_tokens_schedule": "constant",
                                                       "assistant_confidence_threshold": 0.0}),
                (f"early exit, layer {L}", f"early exit, layer {L}", early, {"assistant_early_exit": L, "num_assistant_tokens": k,
                                                                               "num_assistant_tokens_schedule": "constant",
                                                                               "assistant_confidence_threshold": 0.0}),
            ):
                for backend in ("eager", "inductor"):
                    methods.append((method, f"decspec {backend}", dname,
                                    lambda backend=backend, dmodel=dmodel: decspec_runner(
                                        "speculative.dec", backend, {"target": target, "draft": dmodel}, {"k": k, **sampling}, b)))
                methods.append((method, "HF", dname, (lambda hf_extra=hf_extra: hf_runner(hf_target, b, hf_extra, temperature)) if b == 1 else None))
            for backend in ("eager", "inductor"):  # ngram 2 = HF's default max_matching_ngram_size
                methods.append(("prompt lookup", f"decspec {backend}", None,
                                lambda backend=backend: decspec_runner("prompt_lookup.dec", backend, {"target": target},
                                                                       {"k": k, "ngram": 2, "temperature": temperature}, b)))
            methods.append(("prompt lookup", "HF", None,
                            (lambda: hf_runner(hf_target, b, {"prompt_lookup_num_tokens": k}, temperature)) if b == 1 else None))

            for method, impl, dname, make in methods:
                row = {"temperature": temperature, "batch": b, "method": method, "impl": impl, "k": k if method != "autoregressive" else None}
                if make is None or isinstance(make, str):
                    row["note"] = make if isinstance(make, str) else "n/a (HF supports batch 1 only)"
                    rows.append(row)
                    print(_line(row), flush=True)
                    continue
                try:
                    run = make()
                    t0 = time.perf_counter()
                    run(ids, args.new_tokens, 0)  # warm-up (compiles the inductor rows)
                    row["warmup_seconds"] = time.perf_counter() - t0
                    if impl == "decspec inductor":
                        import torch._dynamo.utils as du
                        row["dynamo_unique_graphs"] = int(du.counters["stats"]["unique_graphs"])
                    before = step_costs(b, impl, method, dname) if impl.startswith("decspec") else None
                    times = []
                    for r in range(args.repeats):
                        seconds, tokens, info = run(ids, args.new_tokens, r)
                        times.append(seconds)
                    after = step_costs(b, impl, method, dname) if impl.startswith("decspec") else None
                    if impl == "decspec inductor":
                        row["dynamo_unique_graphs_after"] = int(du.counters["stats"]["unique_graphs"])
                except Exception as e:  # record and go on: one broken method must not lose the table
                    row["note"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                    rows.append(row)
                    print(_line(row), flush=True)
                    continue
                total = len(ids) * args.new_tokens
                row.update(seconds=statistics.median(times), all_seconds=times, tokens_per_second=total / statistics.median(times), **info)
                if before is not None:  # model step costs: the mean of the measurements before and after the repeats
                    steps = {role: {key: (before[role][key] + after[role][key]) / 2 for key in before[role]} for role in before}
                    row["model_step_seconds"] = steps
                    row["framework_overhead"] = framework_overhead(row, steps, row["seconds"])
                if temperature == 0:
                    if reference_tokens is None and impl == "HF" and method == "autoregressive" and b == 1:
                        reference_tokens = tokens
                    row["tokens"] = tokens
                if dname is not None:
                    row["c"] = cost[b][dname]
                rows.append(row)
                print(_line(row), flush=True)

    # derived columns
    by = {(r["temperature"], r["batch"], r["method"], r["impl"]): r for r in rows}
    for r in rows:
        if "tokens_per_second" not in r:
            continue
        base = by.get((r["temperature"], r["batch"], "autoregressive", r["impl"]))
        if base is None:
            base = by.get((r["temperature"], r["batch"], "autoregressive", "HF"))
        if base and base.get("tokens_per_second") and r["method"] != "autoregressive":
            r["speedup"] = r["tokens_per_second"] / base["tokens_per_second"]
        hf = by.get((r["temperature"], r["batch"], r["method"], "HF"))
        if r["impl"] != "HF" and hf and hf.get("tokens_per_second"):
            r["ratio_to_hf"] = r["tokens_per_second"] / hf["tokens_per_second"]
        if r["method"] == "prompt lookup" and r["impl"] != "HF":
            r["c"] = 0.0  # no draft model: drafting is a lookup in the context
        if "c" in r and r.get("acceptance_rate") is not None and "speedup" in r:
            r["ideal_speedup"] = ideal_speedup(r["acceptance_rate"], k, r["c"])
            r["efficiency"] = r["speedup"] / r["ideal_speedup"]
        if r["temperature"] == 0 and reference_tokens is not None and "tokens" in r:
            same = [a == b_ for a, b_ in zip(r["tokens"], reference_tokens)]
            r["same_as_hf_greedy"] = sum(same) / len(same)
    for r in rows:
        r.pop("tokens", None)
    return {"prompts": len(ids), "new_tokens": args.new_tokens, "k": k, "layer": L, "repeats": args.repeats,
            "batch": args.batch, "temperatures": args.temperatures, "cost_ratio_c": {str(b): v for b, v in cost.items()},
            "machine": machine(), "rows": rows}


def machine() -> str:
    import os

    import transformers

    return f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), torch {torch.__version__} CPU, transformers {transformers.__version__}, {torch.get_num_threads()} threads"


def _fmt(x, spec=".2f", none="–"):
    return none if x is None else format(x, spec)


def _line(r: dict) -> str:
    if "tokens_per_second" not in r:
        return f"T={r['temperature']} B={r['batch']} {r['method']:<20} {r['impl']:<17} {r.get('note', '')}"
    return (f"T={r['temperature']} B={r['batch']} {r['method']:<20} {r['impl']:<17} {r['tokens_per_second']:8.1f} tok/s  "
            f"accepted/round {_fmt(r.get('mean_accepted'))}  warm-up {r['warmup_seconds']:.1f}s")


def table(data: dict) -> str:
    lines = ["| T | batch | method | implementation | tokens/s | accepted / round | α | speedup vs own AR | × HF same method | c | ideal speedup | efficiency | framework overhead | same tokens as HF greedy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        if "tokens_per_second" not in r:
            lines.append(f"| {r['temperature']:g} | {r['batch']} | {r['method']} | {r['impl']} | {r['note']} | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['temperature']:g} | {r['batch']} | {r['method']} | {r['impl']} | {r['tokens_per_second']:.1f} | {_fmt(r.get('mean_accepted'))} | "
            f"{_fmt(r.get('acceptance_rate'))} | {_fmt(r.get('speedup'))} | {_fmt(r.get('ratio_to_hf'))} | {_fmt(r.get('c'), '.3f')} | "
            f"{_fmt(r.get('ideal_speedup'))} | {_fmt(r.get('efficiency'))} | {_fmt(r.get('framework_overhead'), '.0%')} | "
            f"{_fmt(r.get('same_as_hf_greedy'), '.0%')} |")
    return "\n".join(lines)


def plot(data: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in data["rows"] if "tokens_per_second" in r]
    labels = [f"T{r['temperature']:g} B{r['batch']}\n{r['method']}\n{r['impl']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.7), 5))
    ax.bar(range(len(rows)), [r["tokens_per_second"] for r in rows],
           color=["tab:blue" if r["impl"] == "HF" else "tab:orange" for r in rows])
    ax.set_xticks(range(len(rows)), labels, rotation=90, fontsize=7)
    ax.set_ylabel("tokens / s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--layer", type=int, default=3, help="early-exit layer L for self-speculation")
    add_output_args(ap, OUT, DOC, "--doc")
    args = ap.parse_args()
    out, doc = outputs(args, OUT, DOC)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    data = measure(args)
    data["total_seconds"] = time.perf_counter() - t0
    plotted = None  # no JSON written: no plot either
    if out:
        write_text(out, json.dumps(data, indent=2) + "\n")
        plotted = plot(data, out.with_suffix(".png"))
    command = (f"python -m benchmarks.speed --prompts {args.prompts} --new-tokens {args.new_tokens} --batch {' '.join(map(str, args.batch))} "
               f"--temperatures {' '.join(f'{t:g}' for t in args.temperatures)} --repeats {args.repeats} --k {args.k} --layer {args.layer}"
               + " --write" * args.write)
    page = (
        "# Speed benchmark\n\n"
        "**On a real model** (SmolLM2-135M-Instruct, next to Hugging Face `generate` and llama.cpp on the same weights): "
        "[real-model benchmarks](real_model.md) (`python -m benchmarks.real_model`). This page is the shipped 6-layer toy pair.\n\n"
        "For every spec in `specs/` side by side (accepted tokens per round, speedup over autoregressive decoding, equality with greedy decoding, at temperatures 0 and 1), see [the spec table](spec_table.md) (`python -m benchmarks.spec_table`).\n\n"
        "Which backend runs which spec (eager, exact, inductor, inductor + torch.compile with its graphs, graph breaks, recompiles "
        "and cold/warm seconds, MLIR export), on tiny random models, each spec in a fresh process: [the backend matrix]"
        "(backend_matrix.md) (`python -m benchmarks.backend_matrix`).\n\n"
        f"Decoding speed of decspec and Hugging Face `generate` on the shipped reference models (target: 6 layers, hidden 256; "
        f"draft: 1 layer), float32, {data['prompts']} held-out standard-library prompts, {args.new_tokens} new tokens each (no EOS stop), "
        f"k = {args.k}, early exit at layer {args.layer}. tokens/s = all new tokens / summed wall time, median of {args.repeats} repeats "
        "after an untimed warm-up (which also compiles the inductor rows). At batch B the prompts run as ceil(prompts / B) calls of B rows.\n\n"
        f"Machine: {data['machine']}. Total run: {data['total_seconds']:.0f} s.\n\n"
        f"Produced by `{command}` (JSON: `benchmarks/results/speed.json`"
        + ("; plot: `benchmarks/results/speed.png`" if plotted else "; no plot: matplotlib is not installed" if plotted is False else "")
        + ").\n\n"
        "Columns: *accepted / round* = drafted tokens accepted per round; *α* = accepted / drafted; *speedup* = tokens/s over the same "
        "implementation's autoregressive row (HF prompt lookup: over HF autoregressive); *× HF* = tokens/s over HF's same method; "
        "*c* = time of one draft forward of 1 token / one target forward of k+1 tokens (at that batch size); *ideal speedup* = "
        "(1 − α^(k+1)) / ((1 − α)(k c + 1)) (Leviathan et al. 2023; prompt lookup: c = 0); *efficiency* = speedup / ideal; "
        "*framework overhead* = 1 − model time / wall time, model time = every model call of the row at its standalone median forward "
        "time measured just before and after that row's repeats (a prompt prefill per generate call, target steps of k+1 tokens or 1 "
        "when autoregressive, draft steps of 1 token; the compiled step for inductor rows), an estimate; *same tokens* = fraction of prompts "
        "whose tokens equal HF greedy autoregressive at batch 1 (temperature 0 only).\n\n" + table(data) + "\n"
    )
    if doc:
        write_text(doc, page)
    print("\n" + table(data))
    if plotted is False:
        print("(matplotlib not installed: no plot)")


if __name__ == "__main__":
    main()
