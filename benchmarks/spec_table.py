"""Every spec in specs/ on the shipped reference models: accepted tokens per round and speedup over autoregressive.

    python -m benchmarks.spec_table [--backend eager|inductor] [--prompts 4] [--new-tokens 48] [--repeats 1]
                                    [--batch 1] [--threads 1] [--temperatures 0 1] [--specs NAME ...] [--target NAME]
                                    [--out PATH] [--markdown PATH] [--write]

The specs are whatever `specs/*.dec` holds when it runs. Each is compiled with `decspec.compile` on the
shipped pair (`reference_models()`: roles "target" and "draft"; early-exit views and draft heads come
from the target), with its `temperature` parameter set to each of `--temperatures` (a spec without one
runs as written, and its row says which fixed sampler it has). It generates `--new-tokens` tokens (no EOS
stop) for each of the held-out prompts of benchmarks/acceptance.py, in calls of `--batch` rows.

Per row: tokens/s (all new tokens over the summed wall time of the calls, median of `--repeats` after a
short untimed warm-up; inductor compiles each spec there, minutes on a CPU), mean drafted tokens accepted per round and tokens committed per round (per row
and round: new tokens / row-rounds, so a round cut short by the token budget counts what it committed),
rounds, speedup = tokens/s over the tokens/s of `specs/autoregressive.dec` at the same temperature and
backend, timed in turns with the spec (per batch of prompts, one call of each, alternating which goes
first, so changes of the machine's load hit both alike), whether the tokens equal autoregressive greedy decoding at temperature 0,
and the losslessness verdict of `decspec check`. A spec that does not compile or run on these models gets a
row with the reason. A grammar-constrained spec decodes a different (masked) distribution, so its speedup
over unconstrained autoregressive decoding is not comparable and is marked so.

With `--target NAME` (a named real model, `decspec pull`), the specs run on that model alone (role
"target"; specs that need a separate draft model or trained heads get a row saying so) on chat prompts
(benchmarks/prompts.py), and the files are spec_table_NAME.json / .md.

Prints the table; writes the JSON (and, with matplotlib, a plot of the speedups next to it) and the page only
where --out / --markdown say, or with --write to benchmarks/results/spec_table[_TARGET].json and
docs/spec_table[_TARGET].md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

import decspec
from benchmarks.acceptance import heldout_prompts
from benchmarks.output import add_output_args, markdown_rows, outputs, write_text
from benchmarks.speed import SPECS, _fmt, chunks, decoder_runner, machine
from decspec.compiler.analysis import pipeline_text
from decspec.dsl.check import load

ROOT = Path(__file__).resolve().parent.parent
BASELINE = SPECS / "autoregressive.dec"
WARMUP_TOKENS = 8
# sampler stages that keep the argmax at temperature 0; any other (a penalty) changes what greedy decoding is
KEEPS_GREEDY = {"greedy", "temperature", "top_k", "top_p", "min_p", "typical_p"}


def discover(spec_dir: Path = SPECS, names: Sequence[str] | None = None) -> list[Path]:
    """The .dec files of spec_dir, sorted by name; `names` (stems, `.dec` optional) picks a subset, in that order."""
    found = {p.stem: p for p in sorted(Path(spec_dir).glob("*.dec"))}
    if not names:
        return list(found.values())
    picked = []
    for name in names:
        stem = Path(name).stem
        if stem not in found:
            raise SystemExit(f"spec_table: no spec {name!r} in {spec_dir}; known: {', '.join(found)}")
        picked.append(found[stem])
    return picked


def _reason(e: BaseException) -> str:
    """The first line of an error, prefixed with its type unless it is a DecError (those name the place);
    paths inside the repository are shown relative to it."""
    text = str(e).strip().splitlines()[0].replace(f"{ROOT}{os.sep}", "") if str(e).strip() else ""
    return text if isinstance(e, decspec.DecError) else f"{type(e).__name__}: {text}"


def prepare(path: Path, models: Mapping[str, Any], temperature: float, backend: str) -> tuple[Any, dict]:
    """Compile one spec at one temperature. Returns (decoder, row fields: verdict, sampler note, grammar)."""
    spec = load(path)
    params = dict(spec.params)
    overrides, fields = {}, {}
    if "temperature" in params:
        overrides["temperature"] = float(temperature)
    else:
        fields["note"] = f"no temperature parameter: sampler fixed ({pipeline_text(spec.slot('sampler', ()))}), run as written"
    if spec.slot("denoise") is not None:  # a diffusion decoder runs on the shipped masked-diffusion model (a DecError if none)
        from decspec.backends.diffusion import default_model

        models = {spec.slot("target").arg("name"): default_model()}
    dec = decspec.compile(path, backend=backend, models=dict(models), overrides=overrides)
    if backend == "inductor":
        dec.backend_options = {"compile": True}
    changes = [str(st) for st in spec.slot("sampler", ()) if st.name not in KEEPS_GREEDY]
    fields.update(
        greedy_differs=f"sampler has {', '.join(changes)}: its temperature-0 output is the penalized target's greedy decoding" if changes else None,
        temperature_applied="temperature" in params,
        grammar=dec.spec.slot("grammar") is not None,
        diffusion=dec.denoise is not None,
        combined=None if dec.spec.slot("target").name == "model" else dec.spec.slot("target").name,  # contrastive, dola
        verdict="deterministic" if dec.verdict.deterministic else "lossless" if dec.verdict.lossless else "lossy",
        verdict_reasons=list(dec.verdict.reasons),
    )
    return dec, fields


class Baseline:
    """specs/autoregressive.dec at one temperature; `run` is timed in turns with each spec's calls (see `interleaved`)."""

    def __init__(self, models: Mapping[str, Any], temperature: float, backend: str, batch: int, ids: list, new_tokens: int):
        dec, _ = prepare(BASELINE, models, temperature, backend)
        self.run = decoder_runner(dec, batch)
        self.run(ids[:batch], min(new_tokens, WARMUP_TOKENS), 0)  # warm-up
        _, self.tokens, _ = self.run(ids, new_tokens, 0)  # untimed: the reference tokens (greedy at temperature 0)


def interleaved(run, baseline: Baseline, ids: list[list[int]], batch: int, new_tokens: int, seed: int) -> dict:
    """One pass over the prompts: per batch of rows, one call of the spec and one of the baseline, in turns
    (the spec first on even batches, the baseline first on odd ones), so changes of the machine's load hit both."""
    out = {"seconds": 0.0, "ar_seconds": 0.0, "ar_new_tokens": 0, "tokens": [], "accepted": 0, "drafted": 0, "rounds": 0, "model_calls": {}}
    for j, part in enumerate(chunks(ids, batch)):
        for who in (("spec", "ar") if j % 2 == 0 else ("ar", "spec")):
            if who == "ar":
                seconds, tokens, _ = baseline.run(part, new_tokens, seed)
                out["ar_seconds"] += seconds
                out["ar_new_tokens"] += sum(map(len, tokens))
                continue
            seconds, tokens, info = run(part, new_tokens, seed)
            out["seconds"] += seconds
            out["tokens"] += tokens
            for key in ("accepted", "drafted", "rounds"):
                out[key] += info[key]
            for role, n in info["model_calls"].items():
                out["model_calls"][role] = out["model_calls"].get(role, 0) + n
    return out


def measure_spec(path: Path, models: Mapping[str, Any], temperature: float, backend: str, batch: int,
                 ids: list[list[int]], new_tokens: int, repeats: int, baseline: Baseline) -> dict:
    """One row: `repeats` interleaved passes of the spec and the baseline (medians).
    A spec that fails to compile or run gives a row with `error` instead of raising."""
    row: dict[str, Any] = {"spec": path.stem, "temperature": float(temperature), "backend": backend}
    try:
        dec, fields = prepare(path, models, temperature, backend)
        row.update(fields)
        if dec.denoise is not None:  # the diffusion model attends over max_length positions, prompt included
            room = dec._bound_models()[dec.spec.slot("target").arg("name")].max_length - new_tokens
            if any(len(p) > room for p in ids):
                ids = [p[-room:] for p in ids]
                _add_note(row, f"prompts cut to their last {room} tokens (the diffusion model's max_length, less the new tokens)")
        run = decoder_runner(dec, batch)
        t0 = time.perf_counter()
        run(ids[:batch], min(new_tokens, WARMUP_TOKENS), 0)  # warm-up: first-call costs, inductor's compile
        row["warmup_seconds"] = time.perf_counter() - t0
        passes = [interleaved(run, baseline, ids, batch, new_tokens, r) for r in range(repeats)]
    except Exception as e:  # noqa: BLE001 - any failure of one spec is that spec's row, not the benchmark's end
        row["error"] = _reason(e)
        return row
    last = passes[-1]
    new, rounds = sum(map(len, last["tokens"])), last["rounds"]
    times, ar_times = [p["seconds"] for p in passes], [p["ar_seconds"] for p in passes]
    row.update(
        seconds=statistics.median(times), all_seconds=times, tokens_per_second=new / statistics.median(times),
        ar_seconds=statistics.median(ar_times), ar_all_seconds=ar_times, ar_tokens_per_second=last["ar_new_tokens"] / statistics.median(ar_times),
        new_tokens=new, rounds=rounds, mean_accepted=last["accepted"] / rounds if rounds else None,
        tokens_per_round=new / rounds if rounds else None,
        acceptance_rate=last["accepted"] / last["drafted"] if last["drafted"] else None, model_calls=last["model_calls"],
    )
    if not rounds:
        _add_note(row, "reports no rounds (" + ("a `search` decoder" if dec.spec.slot("search") is not None else "no round stats") + ")")
    ratio = row["tokens_per_second"] / row["ar_tokens_per_second"]
    if dec.denoise is not None:  # another model than the baseline's: its time is not a speedup of the same distribution
        row["speedup"] = None
        row["speedup_note"] = "not comparable (a masked-diffusion target, not the baseline's model)"
    elif row["combined"]:  # contrastive, DoLa: the combined distribution is not the baseline's
        row["speedup"] = None
        row["ratio_to_unconstrained_ar"] = ratio
        row["speedup_note"] = f"not comparable (a combined target: {row['combined']})"
    elif row["grammar"]:
        row["speedup"] = None
        row["ratio_to_unconstrained_ar"] = ratio  # kept for reference; not a speedup of the same distribution
        row["speedup_note"] = "not comparable (grammar-constrained)"
    else:
        row["speedup"] = ratio
    row["tokens"] = last["tokens"]
    return row


def measure(models: Mapping[str, Any], ids: list[list[int]], specs: Sequence[Path], *, temperatures: Sequence[float] = (0.0, 1.0),
            backend: str = "eager", new_tokens: int = 48, repeats: int = 1, batch: int = 1, log=print) -> list[dict]:
    """All rows: for each temperature, each spec in order, interleaved with the autoregressive baseline."""
    rows: list[dict] = []
    greedy: list[list[int]] | None = None  # autoregressive greedy tokens, for the equality column
    for temperature in sorted(temperatures):
        baseline = Baseline(models, temperature, backend, batch, ids, new_tokens)
        if temperature == 0:
            greedy = baseline.tokens
        for path in specs:
            row = measure_spec(path, models, temperature, backend, batch, ids, new_tokens, repeats, baseline)
            tokens = row.pop("tokens", None)
            if temperature == 0 and tokens is not None and greedy is not None:
                if row["grammar"] or row["combined"] or row["diffusion"]:
                    row["equals_greedy"] = None
                    row["equals_greedy_note"] = ("n/a (grammar-constrained)" if row["grammar"] else "n/a (a combined target)"
                                                 if row["combined"] else "n/a (a masked-diffusion target)")
                else:
                    row["equals_greedy"] = sum(a == b for a, b in zip(tokens, greedy)) / len(greedy)
                    if row["verdict"] == "lossless" and row["equals_greedy"] < 1:
                        _add_note(row, row["greedy_differs"] or "lossless, but differs from greedy decoding")
            rows.append(row)
            log(line(row))
    return rows


def _add_note(row: dict, text: str) -> None:
    row["note"] = f"{row['note']}; {text}" if row.get("note") else text


# ---------------------------------------------------------------- output

def _speedup(r: dict) -> str:
    return _fmt(r.get("speedup")) if r.get("speedup") is not None else r.get("speedup_note", "–")


def _equals(r: dict) -> str:
    if "equals_greedy" not in r:
        return "–"
    return _fmt(r["equals_greedy"], ".0%") if r["equals_greedy"] is not None else r["equals_greedy_note"]


def line(r: dict) -> str:
    head = f"{r['spec']:<22} T={r['temperature']:g}"
    if "error" in r:
        return f"{head}  FAILED: {r['error']}"
    return (f"{head}  {r['verdict']:<8} {r['tokens_per_second']:7.1f} tok/s  accepted/round {_fmt(r['mean_accepted'])}  "
            f"tokens/round {_fmt(r['tokens_per_round'])}  rounds {r['rounds']:4d}  speedup {_speedup(r)}  "
            f"equals greedy {_equals(r)}" + (f"  ({r['note']})" if r.get("note") else ""))


COLUMNS = ["spec", "verdict", "tokens/s", "accepted drafts / round", "tokens / round", "rounds", "speedup vs AR", "equals AR greedy", "note"]


def table_rows(rows: Sequence[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["spec"], r.get("verdict", "–"), "–", "–", "–", "–", "–", "–", f"failed: {r['error']}"])
            continue
        out.append([r["spec"], r["verdict"], f"{r['tokens_per_second']:.1f}", _fmt(r["mean_accepted"]), _fmt(r["tokens_per_round"]),
                    str(r["rounds"]), _speedup(r), _equals(r), r.get("note", "")])
    return out


def markdown_table(rows: Sequence[dict]) -> str:
    return markdown_rows(list(COLUMNS), table_rows(rows))


def console_table(rows: Sequence[dict]) -> str:
    cells = [["T"] + COLUMNS] + [[f"{r['temperature']:g}"] + c for r, c in zip(rows, table_rows(rows))]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cs, widths)) + "  " + cs[-1] for cs in cells)


def render_markdown(data: dict) -> str:
    """docs/spec_table.md: the command, the machine, how to read the table, and one table per temperature."""
    a = data["args"]
    temps = sorted({r["temperature"] for r in data["rows"]})
    load = data.get("load_average")
    json_path = data.get("json", "benchmarks/results/spec_table.json")
    parts = [
        f"# Every spec on {a.get('target') or 'the shipped models'}\n",
        (f"Mean accepted tokens per round and speedup over autoregressive decoding for every spec in `specs/`, on the named model "
         f"`{a['target']}` alone (role `target`: specs that need a draft model or trained heads report why they cannot run), "
         f"float32, {a['backend']} backend, {a['prompts']} chat prompts (benchmarks/prompts.py) × {a['new_tokens']} new tokens "
         f"(no EOS stop), batch {a['batch']}, " if a.get("target") else
         f"Mean accepted tokens per round and speedup over autoregressive decoding for every spec in `specs/`, on the shipped "
         f"reference models (`reference_models()`: the target, and the 1-layer draft for specs with a `draft` role; early-exit "
         f"and layer-skip drafts and Medusa/Hydra heads come from the target), float32, {a['backend']} backend, "
         f"{a['prompts']} held-out standard-library prompts × {a['new_tokens']} new tokens (no EOS stop), batch {a['batch']}, ") +
        f"{a.get('threads', 1)} torch thread(s), "
        f"median of {a['repeats']} timed run(s) after a short warm-up.\n",
        f"Produced by `{data['command']}` on {data['date']} (JSON: `{json_path}`"
        + (f"; plot of the speedups: `{json_path.removesuffix('.json')}.png`" if data.get("plot") else "") + "). "
        f"Machine: {data['machine']}"
        + (f"; load average {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end (1 min; the CPU is shared)" if load else "")
        + f". Total run: {data['total_seconds']:.0f} s.\n",
        "## How to read it\n",
        "*accepted drafts / round* is the mean number of drafted tokens the verifier kept per round (per row); *tokens / round* "
        "is what a round committed (new tokens / row-rounds: the accepted drafts plus the target's own token, less when the "
        "token budget cuts the last round short) — autoregressive decoding commits 1. *speedup vs AR* is the spec's tokens/s "
        "over `specs/autoregressive.dec`'s at the same temperature and backend, timed in turns with the spec (per batch of "
        "prompts one call of each, alternating which goes first; median over the repeats), so changes of the machine's load "
        "hit both. On these small CPU models a round's fixed costs (the "
        "framework's host work, the draft's calls, the wider verification call) are large next to one target call, so a spec "
        "can commit several tokens per round and still be slower than autoregressive decoding: read the two columns together "
        "([the speed benchmark](benchmarks.md) measures the framework overhead). *equals AR greedy* (temperature 0 only) is the fraction "
        "of prompts whose tokens equal autoregressive greedy decoding, which every lossless spec must reach at temperature 0 "
        "unless its sampler has a penalty stage (its output is then the penalized target's greedy decoding; the note says so). "
        "Grammar-constrained specs decode the masked target, and specs with a combined target (`contrastive`, `dola`) the "
        "combined distribution, so neither their speedup over plain autoregressive decoding nor their equality with it is "
        "comparable; diffusion decoders run another model (the shipped masked-diffusion one). Each spec's `temperature` parameter is set to the row's temperature; specs without "
        "one run as written (the note names their sampler), as do the other parameters (`top_p` of autoregressive.dec "
        "stays 0.95 at temperature 1). *verdict* is `decspec check`'s losslessness analysis. The speedup of "
        "autoregressive.dec against itself shows the run-to-run noise.\n",
    ]
    for t in temps:
        parts.append(f"## Temperature {t:g}\n")
        parts.append(markdown_table([r for r in data["rows"] if r["temperature"] == t]) + "\n")
    return "\n".join(parts)


def plot(data: dict, path: Path) -> bool:
    """Speedup vs autoregressive per spec, one panel per temperature (grammar-constrained and failed rows left out)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    temps = sorted({r["temperature"] for r in data["rows"]})
    panels = [[r for r in data["rows"] if r["temperature"] == t and r.get("speedup") is not None] for t in temps]
    height = max(3.0, 0.28 * max(map(len, panels), default=1) + 1.2)
    fig, axes = plt.subplots(1, len(temps), figsize=(6 * len(temps), height), squeeze=False)
    for ax, t, rows in zip(axes[0], temps, panels):
        ax.barh(range(len(rows)), [r["speedup"] for r in rows],
                color=[{"lossless": "tab:green", "deterministic": "tab:gray"}.get(r["verdict"], "tab:red") for r in rows])
        ax.set_yticks(range(len(rows)), [f"{r['spec']} ({_fmt(r['tokens_per_round'])} tok/round)" for r in rows], fontsize=7)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_xlabel("speedup vs autoregressive (green: lossless, red: lossy, gray: deterministic search)")
        ax.set_title(f"temperature {t:g}, {data['args']['backend']} backend")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def command_line(args: argparse.Namespace) -> str:
    cmd = (f"python -m benchmarks.spec_table --backend {args.backend} --prompts {args.prompts} --new-tokens {args.new_tokens} "
           f"--repeats {args.repeats} --batch {args.batch} --threads {args.threads} --temperatures {' '.join(f'{t:g}' for t in args.temperatures)}")
    return (cmd + (f" --specs {' '.join(args.specs)}" if args.specs else "") + (f" --target {args.target}" if args.target else "")
            + (" --write" if args.write else ""))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["eager", "inductor"], default="eager")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared, loaded CPU two threads per process can run 20x slower)")
    ap.add_argument("--specs", nargs="+", metavar="NAME", help="a subset of specs/ (file stems); default: all")
    ap.add_argument("--target", help="a named real model (decspec models) instead of the shipped pair")
    add_output_args(ap, "benchmarks/results/spec_table[_TARGET].json", "docs/spec_table[_TARGET].md")
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if min(args.prompts, args.new_tokens, args.repeats, args.batch, args.threads) < 1:
        raise SystemExit("spec_table: --prompts, --new-tokens, --repeats, --batch and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    start_load, t0 = os.getloadavg(), time.perf_counter()
    specs = discover(SPECS, args.specs)
    from decspec.stdlib.models.pretrained import reference_models

    suffix = f"_{args.target}" if args.target else ""
    args.out, args.markdown = outputs(args, ROOT / "benchmarks" / "results" / f"spec_table{suffix}.json",
                                      ROOT / "docs" / f"spec_table{suffix}.md")
    if args.target:
        from benchmarks.prompts import chat_prompts
        from decspec.stdlib.models.registry import resolve_model

        models = {"target": resolve_model(args.target)}
        ids = [models["target"].tokenizer.encode_prompt(p) for p in chat_prompts(models["target"].tokenizer, args.prompts)]
    else:
        models = reference_models()
        ids = [models["target"].tokenizer.encode_prompt(p) for p in heldout_prompts(args.prompts)]
    rows = measure(models, ids, specs, temperatures=args.temperatures, backend=args.backend, new_tokens=args.new_tokens,
                   repeats=args.repeats, batch=args.batch, log=lambda s: print(s, flush=True))
    data = {
        "command": command_line(args), "argv": sys.argv, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "torch": torch.__version__, "load_average": {"start": list(start_load), "end": list(os.getloadavg())},
        "specs": [p.stem for p in specs], "total_seconds": time.perf_counter() - t0, "rows": rows,
    }
    if args.out:
        data["json"] = str(args.out.relative_to(ROOT)) if args.out.is_relative_to(ROOT) else str(args.out)
        write_text(args.out, json.dumps(data, indent=1) + "\n")
        data["plot"] = plot(data, args.out.with_suffix(".png"))
    if args.markdown:
        write_text(args.markdown, render_markdown(data))
    print("\n" + console_table(rows))
    print(f"\n{len(specs)} specs × {len(args.temperatures)} temperatures in {data['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
