"""decspec on a real model, side by side with Hugging Face `generate` (and llama.cpp when built), in one run.

    python -m benchmarks.real_model [--model smollm2-135m-instruct] [--workloads chat code] [--batch 1 4]
        [--temperatures 0 1] [--prompts 4] [--new-tokens 64] [--repeats 3] [--threads 2] [--k 4] [--lookup-k 10]
        [--out PATH] [--markdown PATH] [--write]

The model is a named model (decspec pull NAME), loaded into decspec's built-in transformer and, for
the peers, into `transformers` from the same converted directory (the same float32 weights).

Workloads (benchmarks/prompts.py): chat questions through the model's chat template, and
code-editing requests that quote a standard-library function (the answer repeats the prompt).
Every row generates exactly `--new-tokens` tokens per prompt (EOS does not stop either side).

Rows, per workload × temperature × batch:
- HF generate (plain), HF prompt lookup (`prompt_lookup_num_tokens`, batch 1 only: HF's limit);
- decspec autoregressive (eager; inductor = the round under torch.compile);
- decspec prompt lookup (`specs/prompt_lookup.dec`, ngram 2 as HF's default, k = --lookup-k), with the most
  recent match (decspec's default) and with `earliest=true` (HF's rule: the first match);
- decspec self-speculation: `specs/swift.dec` with the skip set given by --skip, and
  `specs/layerskip.dec` at --exit-layer (the untrained model's own layers as the draft);
- drafts trained for the model and shipped with decspec (stdlib/models/train_drafts.py), where it has them:
  `specs/eagle.dec`, `specs/medusa.dec`, `specs/hydra.dec` on its heads, `specs/speculative.dec` with its draft
  model, and HF assisted generation with that draft as the assistant (batch 1: HF's limit);
- with --int4, the model quantized (stdlib/models/quant.py: 4-bit projections, 8-bit LM head, bfloat16
  arithmetic in the matmuls): autoregressive, prompt lookup (earliest), EAGLE and Hydra on it; their "own
  autoregressive" is the quantized one, and their "= HF greedy" column shows how far its greedy text
  follows the float32 model's (it is another arithmetic, as llama.cpp's is);
- llama.cpp (when `DECSPEC_LLAMA_CPP` names its build's bin directory): llama-bench generation speed
  on the original GGUF (quantized weights, so not the same arithmetic), batch 1, temperature 0 only.

Timing is interleaved: after one untimed warm-up of every row, each repeat runs every row once, in an
order rotated by the repeat, so a change of the machine's load hits all rows alike; the median
over repeats is reported, with the load average at start and end. Threads are pinned (--threads).

Columns: tokens/s, speedup over HF plain and over decspec's own autoregressive (same backend),
accepted drafts per round, acceptance rate α, the draft/target cost ratio c (one draft step of
1 token over one target step of k+1 tokens, measured here), the Leviathan ideal speedup
(1 - α^(k+1)) / ((1 - α)(k c + 1)), and at temperature 0 the share of prompts whose tokens equal
HF greedy decoding at batch 1, token for token.

Prints each row as it is measured; writes the JSON and the page only where --out / --markdown say, or with
--write to benchmarks/results/real_model.json and docs/real_model.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

import decspec
from benchmarks.output import add_output_args, outputs, write_text
from benchmarks.prompts import WORKLOADS
from benchmarks.speed import decoder_runner, forward_time, hf_runner, ideal_speedup, machine

ROOT = Path(__file__).resolve().parent.parent
OUT, DOC = ROOT / "benchmarks" / "results" / "real_model.json", ROOT / "docs" / "real_model.md"
SPECS = ROOT / "specs"


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # exactly new_tokens tokens, as decspec's rows
    model.generation_config.pad_token_id = 0
    return model


def decspec_run(spec: str, models: dict, overrides: dict, batch: int, backend: str = "eager"):
    dec = decspec.compile(SPECS / spec, backend=backend, models=models, overrides={k: str(v) for k, v in overrides.items()})
    if backend == "inductor":
        dec.backend_options = {"compile": True}
    return decoder_runner(dec, batch)


def rows_for(args, model, hf, T: float, B: int) -> list[tuple[str, dict, object]]:
    """(name, fields, make) per row; make() -> run, or a string saying why the row does not apply."""
    sampling = {"temperature": T, "top_p": 1.0}
    k, lk = args.k, args.lookup_k
    skip = "[" + ", ".join(map(str, args.skip)) + "]"
    models = {"target": model}
    out = [
        ("HF generate", {"method": "autoregressive", "impl": "HF"}, lambda: hf_runner(hf, B, {}, T)),
        ("HF prompt lookup", {"method": "prompt lookup", "impl": "HF", "k": lk},
         (lambda: hf_runner(hf, B, {"prompt_lookup_num_tokens": lk}, T)) if B == 1 else "HF: batch 1 only"),
        ("decspec autoregressive", {"method": "autoregressive", "impl": "decspec eager"},
         lambda: decspec_run("autoregressive.dec", models, sampling, B)),
        ("decspec prompt lookup", {"method": "prompt lookup", "impl": "decspec eager", "k": lk, "c": 0.0},
         lambda: decspec_run("prompt_lookup.dec", models, {"k": lk, "ngram": 2, "temperature": T}, B)),
        ("decspec prompt lookup, earliest", {"method": "prompt lookup earliest", "impl": "decspec eager", "k": lk, "c": 0.0},
         lambda: decspec_run("prompt_lookup.dec", models, {"k": lk, "ngram": 2, "temperature": T, "earliest": "true"}, B)),
    ]
    if B == 1:  # self-drafting from the untrained model's own layers: batch 1 only (it does not pay; see docs)
        out += [
            (f"decspec swift skip {skip}", {"method": "layer skip", "impl": "decspec eager", "k": k, "skip": args.skip},
             lambda: decspec_run("swift.dec", models, {"k": k, "skip": skip, "temperature": T}, B)),
            (f"decspec early exit {args.exit_layer}", {"method": "early exit", "impl": "decspec eager", "k": k, "layer": args.exit_layer},
             lambda: decspec_run("layerskip.dec", models, {"k": k, "layer": args.exit_layer, "temperature": T}, B)),
        ]
    draft = getattr(model, "shipped_draft", None)  # drafts trained for the model (stdlib/models/train_drafts.py)
    for kind in ("eagle", "medusa", "hydra"):
        if kind in model.heads:
            out.append((f"decspec {kind} (trained head)", {"method": kind, "impl": "decspec eager", "k": k},
                        lambda kind=kind: decspec_run(f"{kind}.dec", models, {"k": k, "temperature": T}, B)))
    if draft is not None:
        out.append(("decspec draft model (trained)", {"method": "draft model", "impl": "decspec eager", "k": k},
                    lambda: decspec_run("speculative.dec", {**models, "draft": draft}, {"k": k, **sampling}, B)))
        out.append(("HF assisted (decspec's draft)", {"method": "draft model", "impl": "HF", "k": k},
                    (lambda: hf_runner(hf, B, {"assistant_model": hf_draft(draft), "num_assistant_tokens": k,
                                               "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.0}, T))
                    if B == 1 else "HF: batch 1 only"))
    if args.inductor and B == 1:
        out.insert(3, ("decspec autoregressive (inductor)", {"method": "autoregressive", "impl": "decspec inductor"},
                       lambda: decspec_run("autoregressive.dec", models, sampling, B, "inductor")))
        out.insert(6, ("decspec prompt lookup, earliest (inductor)",
                       {"method": "prompt lookup earliest", "impl": "decspec inductor", "k": lk, "c": 0.0},
                       lambda: decspec_run("prompt_lookup.dec", models, {"k": lk, "ngram": 2, "temperature": T, "earliest": "true"},
                                           B, "inductor")))
    qmodel = getattr(args, "qmodel", None)
    if qmodel is not None:  # the same model quantized (stdlib/models/quant.py): another arithmetic, its own AR as baseline
        qm = {"target": qmodel}
        out += [
            ("decspec autoregressive (int4)", {"method": "autoregressive", "impl": "decspec int4"},
             lambda: decspec_run("autoregressive.dec", qm, sampling, B)),
            ("decspec prompt lookup, earliest (int4)", {"method": "prompt lookup earliest", "impl": "decspec int4", "k": lk, "c": 0.0},
             lambda: decspec_run("prompt_lookup.dec", qm, {"k": lk, "ngram": 2, "temperature": T, "earliest": "true"}, B)),
        ]
        if args.inductor and B == 1:
            out += [
                ("decspec autoregressive (int4, inductor)", {"method": "autoregressive", "impl": "decspec int4 inductor"},
                 lambda: decspec_run("autoregressive.dec", qm, sampling, B, "inductor")),
                ("decspec prompt lookup, earliest (int4, inductor)",
                 {"method": "prompt lookup earliest", "impl": "decspec int4 inductor", "k": lk, "c": 0.0},
                 lambda: decspec_run("prompt_lookup.dec", qm, {"k": lk, "ngram": 2, "temperature": T, "earliest": "true"}, B, "inductor")),
            ]
        for kind in ("eagle", "hydra"):
            if kind in qmodel.heads:
                out.append((f"decspec {kind} (int4)", {"method": kind, "impl": "decspec int4", "k": k},
                            lambda kind=kind: decspec_run(f"{kind}.dec", qm, {"k": k, "temperature": T}, B)))
    if args.hf_early_exit and B == 1:
        out.append((f"HF early exit {args.exit_layer}", {"method": "early exit", "impl": "HF", "k": k},
                    lambda: hf_runner(hf, B, {"assistant_early_exit": args.exit_layer, "num_assistant_tokens": k,
                                              "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.0}, T)))
    return out


def hf_draft(draft):
    """The shipped draft model as a transformers Llama (its own layers, the target's embedding, the whole vocabulary:
    HF's assistant cannot take a draft vocabulary)."""
    import tempfile

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from decspec.stdlib.models.train import hf_config

    folder = Path(tempfile.mkdtemp(prefix="decspec-hf-draft-"))
    state = {k: v.contiguous() for k, v in draft.state_dict().items() if not k.startswith("lm_head")}
    state["model.embed_tokens.weight"] = draft.model.embed_tokens.weight.contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(draft.config)
    config["torch_dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf


def cost_ratios(args, model, prompt_len: int, B: int) -> dict:
    """c per self-drafting row: one draft step (1 token) over one target step (k+1 tokens), eager forwards."""
    from decspec.stdlib.models.views import EarlyExit, SkipLayers

    t_target = forward_time(model, B, prompt_len, args.k + 1, reps=10)
    out = {"layer skip": forward_time(SkipLayers(model, tuple(args.skip)), B, prompt_len, 1, reps=10) / t_target,
           "early exit": forward_time(EarlyExit(model, args.exit_layer), B, prompt_len, 1, reps=10) / t_target}
    if getattr(model, "shipped_draft", None) is not None:
        out["draft model"] = forward_time(model.shipped_draft, B, prompt_len, 1, reps=10) / t_target
    return out


def measure_config(args, model, hf, workload: str, ids: list[list[int]], T: float, B: int, reference: list | None, log) -> list[dict]:
    rows, runs = [], []
    for name, fields, make in rows_for(args, model, hf, T, B):
        if args.rows and not (name == "HF generate" or any(re.search(r, name) for r in args.rows)):
            continue
        row = {"workload": workload, "temperature": T, "batch": B, "row": name, **fields}
        rows.append(row)
        if isinstance(make, str):
            row["note"] = make
            continue
        try:
            run = make()
            t0 = time.perf_counter()
            run(ids[:B], 8, 0)  # warm-up (compiles the inductor rows)
            row["warmup_seconds"] = time.perf_counter() - t0
            runs.append((row, run))
        except Exception as e:  # one broken row must not lose the table
            row["note"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    times: dict[int, list[float]] = {id(r): [] for r, _ in runs}
    for rep in range(args.repeats):
        order = runs[rep % len(runs):] + runs[: rep % len(runs)] if runs else []
        for row, run in order:
            try:
                seconds, tokens, info = run(ids, args.new_tokens, rep)
            except Exception as e:
                row["note"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                continue
            times[id(row)].append(seconds)
            if rep == 0:
                row["tokens"] = tokens
                for key in ("mean_accepted", "acceptance_rate", "accepted", "drafted", "rounds"):
                    if info.get(key) is not None:
                        row[key] = info[key]
    for row, _ in runs:
        ts = times[id(row)]
        if ts:
            row.update(seconds=statistics.median(ts), all_seconds=ts, tokens_per_second=len(ids) * args.new_tokens / statistics.median(ts))
    # derived columns
    by = {(r["impl"], r["method"]): r for r in rows if "tokens_per_second" in r}
    hf_plain = by.get(("HF", "autoregressive"))
    prompt_len = round(statistics.mean(map(len, ids)))
    cost = cost_ratios(args, model, prompt_len, B) if any(r["method"] in ("layer skip", "early exit", "draft model") for r in by.values()) else {}
    for r in rows:
        if "tokens_per_second" not in r:
            continue
        if hf_plain:
            r["vs_hf"] = r["tokens_per_second"] / hf_plain["tokens_per_second"]
        own = by.get((r["impl"], "autoregressive"))
        if own and r["method"] != "autoregressive":
            r["vs_own_ar"] = r["tokens_per_second"] / own["tokens_per_second"]
        if r["method"] in cost and r["impl"].startswith("decspec"):
            r["c"] = cost[r["method"]]
        if r.get("c") is not None and r.get("acceptance_rate") is not None:
            r["ideal_speedup"] = ideal_speedup(r["acceptance_rate"], r["k"], r["c"])
        if T == 0 and reference is not None and "tokens" in r:
            same = [a == b for a, b in zip(r["tokens"], reference)]
            r["same_as_hf_greedy"] = sum(same) / len(same)
            prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in zip(r["tokens"], reference)]
            r["hf_greedy_prefix"] = statistics.mean(prefix)  # tokens before the first that differs from HF greedy
            if not all(same):
                r["note"] = (r.get("note", "") + f" equals HF greedy for the first {r['hf_greedy_prefix']:.0f} tokens on average").strip()
    for r in rows:
        log(line(r))
    return rows


def llama_cpp_rows(args, gguf: Path, prompts: dict[str, list[str]], log) -> list[dict]:
    """llama.cpp on the original GGUF (Q4_1 weights: not the same arithmetic), batch 1, temperature 0,
    when DECSPEC_LLAMA_CPP names its bin directory: llama-bench, then llama-cli (plain) and llama-lookup
    (prompt lookup, --lookup-k) on each workload's prompts (decode tokens/s, median over prompts)."""
    from benchmarks import llamacpp

    if llamacpp.bin_dir() is None:
        row = {"row": "llama.cpp", "impl": "llama.cpp", "note": "not run: set DECSPEC_LLAMA_CPP to a llama.cpp build's bin directory"}
        log(line(row))
        return [row]
    rows = []

    def attempt(fields: dict, fn) -> None:
        row = {"temperature": 0.0, "batch": 1, "impl": "llama.cpp", **fields}
        try:
            row.update(fn())
        except Exception as e:
            row["note"] = f"error: {str(e).splitlines()[0][:200]}"
        rows.append(row)
        log(line(row))

    def bench():
        b = llamacpp.bench(gguf, threads=args.threads, n_gen=args.new_tokens, repeats=args.repeats)
        return {**b, "tokens_per_second": b["tg_tokens_per_second"]}

    attempt({"workload": "any", "row": "llama.cpp llama-bench", "method": "autoregressive"}, bench)
    for workload, texts in prompts.items():
        def plain(texts=texts):
            runs = [llamacpp.generate(gguf, t, args.new_tokens, args.threads, ignore_eos=True) for t in texts]
            return {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs)}

        def lookup(texts=texts):
            runs = [llamacpp.lookup(gguf, t, args.new_tokens, args.threads, args.lookup_k) for t in texts]
            drafted, accepted = sum(r["drafted"] for r in runs), sum(r["accepted"] for r in runs)
            return {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs),
                    "acceptance_rate": accepted / drafted if drafted else None, "k": args.lookup_k}

        attempt({"workload": workload, "row": "llama.cpp llama-cli", "method": "autoregressive"}, plain)
        if llamacpp.has_tool("llama-lookup"):
            attempt({"workload": workload, "row": "llama.cpp llama-lookup", "method": "prompt lookup"}, lookup)
    by = {(r.get("workload"), r["method"]): r for r in rows if r.get("tokens_per_second")}
    for r in rows:
        plain = by.get((r.get("workload"), "autoregressive"))
        if plain and r["method"] != "autoregressive" and r.get("tokens_per_second"):
            r["vs_own_ar"] = r["tokens_per_second"] / plain["tokens_per_second"]
    return rows


def fmt(x, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def line(r: dict) -> str:
    if "tokens_per_second" not in r:
        return f"{r.get('workload', '')} T={r.get('temperature', '')} B={r.get('batch', '')} {r['row']}: {r.get('note', '')}"
    return (f"{r.get('workload')} T={r.get('temperature'):g} B={r.get('batch')} {r['row']}: {r['tokens_per_second']:.1f} tok/s, "
            f"vs HF {fmt(r.get('vs_hf'))}, vs own AR {fmt(r.get('vs_own_ar'))}, accepted/round {fmt(r.get('mean_accepted'))}, "
            f"α {fmt(r.get('acceptance_rate'))}, c {fmt(r.get('c'), '.3f')}, ideal {fmt(r.get('ideal_speedup'))}, "
            f"= HF greedy {fmt(r.get('same_as_hf_greedy'), '.0%')}")


def markdown(data: dict) -> str:
    head = ("| workload | T | batch | row | tokens/s | vs HF generate | vs own autoregressive | accepted / round | α | c | ideal speedup "
            "| = HF greedy | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = ""
    for r in data["rows"]:
        body += (f"| {r.get('workload', '')} | {fmt(r.get('temperature'), 'g')} | {r.get('batch', '')} | {r['row']} | "
                 f"{fmt(r.get('tokens_per_second'), '.1f')} | {fmt(r.get('vs_hf'))} | {fmt(r.get('vs_own_ar'))} | "
                 f"{fmt(r.get('mean_accepted'))} | {fmt(r.get('acceptance_rate'))} | {fmt(r.get('c'), '.3f')} | "
                 f"{fmt(r.get('ideal_speedup'))} | {fmt(r.get('same_as_hf_greedy'), '.0%')} | {r.get('note', '')} |\n")
    la = data["load_average"]
    return (f"# decspec on {data['model']} (generated by benchmarks/real_model.py)\n\n"
            f"Command: `{data['command']}`\n\n{data['date']}; {data['machine']}; torch {data['torch']}, transformers "
            f"{data['transformers']}; {data['threads']} threads; load average {la['start'][0]:.2f} at start, {la['end'][0]:.2f} at end; "
            f"{data['total_seconds']:.0f} s.\n\nPrompts: {data['prompts']} per workload, {data['new_tokens']} new tokens each; "
            f"median of {data['repeats']} interleaved repeats. See the module docstring for the columns.\n\n" + head + body)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--workloads", nargs="+", default=["chat", "code"], choices=list(WORKLOADS))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=4, help="draft length of the self-speculative rows")
    ap.add_argument("--lookup-k", type=int, default=10, help="draft length of the prompt lookup rows (HF's usual 10)")
    ap.add_argument("--skip", type=int, nargs="+", default=None,
                    help="layers the swift row skips (default: the 3-layer set python -m decspec.stdlib.models.skip_search found on "
                         "SmolLM2-135M, [5, 17, 25]; every other middle layer for other models)")
    ap.add_argument("--exit-layer", type=int, default=None, help="early-exit layer (default: 3/4 of the depth)")
    ap.add_argument("--inductor", action="store_true", help="add torch.compile'd rows at batch 1 (about a minute of compiling each on CPU)")
    ap.add_argument("--hf-early-exit", action="store_true", help="add HF assistant_early_exit at batch 1")
    ap.add_argument("--rows", nargs="+", default=None, metavar="REGEX",
                    help="only the rows whose name matches one of these (HF generate always runs: the ratios' base)")
    ap.add_argument("--int4", action="store_true", help="add rows on the model quantized to int4 (stdlib/models/quant.py)")
    add_output_args(ap, OUT, DOC)
    args = ap.parse_args(argv)
    out, doc = outputs(args, OUT, DOC)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    from decspec.stdlib.models.registry import gguf_path, load_named, pull

    path = pull(args.model)
    model = load_named(args.model)
    args.qmodel = load_named(args.model, quantize="int4") if args.int4 else None
    L = model.num_layers
    args.skip = args.skip or ([5, 17, 25] if args.model == "smollm2-135m-instruct" else list(range(L // 4, L - L // 4, 2)))
    args.exit_layer = args.exit_layer or (3 * L) // 4
    hf = hf_model(path)
    start_load, t0 = os.getloadavg(), time.perf_counter()
    rows: list[dict] = []
    texts = {w: WORKLOADS[w](model.tokenizer, args.prompts) for w in args.workloads}
    for workload in args.workloads:
        ids = [model.tokenizer.encode_prompt(p) for p in texts[workload]]
        reference = None
        if 0.0 in args.temperatures:  # HF greedy at batch 1: what every T=0 row is compared with
            _, reference, _ = hf_runner(hf, 1, {}, 0.0)(ids, args.new_tokens, 0)
        for T in args.temperatures:
            for B in args.batch:
                rows += measure_config(args, model, hf, workload, ids, T, B, reference if T == 0 else None, print)
    rows += llama_cpp_rows(args, gguf_path(args.model), texts, print)
    for r in rows:
        r.pop("tokens", None)
    import transformers

    data = {"command": "python -m benchmarks.real_model " + " ".join(argv if argv is not None else sys.argv[1:]),
            "model": args.model, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
            "prompts": args.prompts, "new_tokens": args.new_tokens, "repeats": args.repeats, "k": args.k, "lookup_k": args.lookup_k,
            "skip": args.skip, "exit_layer": args.exit_layer,
            "load_average": {"start": list(start_load), "end": list(os.getloadavg())}, "total_seconds": time.perf_counter() - t0,
            "rows": rows}
    if out:
        write_text(out, json.dumps(data, indent=1) + "\n")
    if doc:
        write_text(doc, markdown(data))


if __name__ == "__main__":
    main()
