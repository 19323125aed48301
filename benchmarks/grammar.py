"""Grammar engines side by side (issue 7): decspec's token index against XGrammar, llguidance and outlines-core.

    python -m benchmarks.grammar                      # everything: 2 vocabularies x 5 grammars x 4 engines, printed
    python -m benchmarks.grammar --vocab 4k --grammar flat --reps 5
    python -m benchmarks.grammar --write              # and the committed JSON and doc section (or --out PATH, --doc PATH)
    python -m benchmarks.grammar --render             # rewrite those from the saved JSON, no runs

For each vocabulary (the shipped 4096-token BPE, and a 32,000-token BPE trained the same way on the same
standard-library corpus, `benchmarks/data/tokenizer32k/`), each grammar (the JSON Schemas in
`benchmarks/data/schemas/`, and `json`: any JSON value, a context-free grammar) and each engine, a fresh
worker process (`--worker`, killed after `--timeout` seconds):

- times the vocabulary setup once (ours: `token_bytes`; XGrammar: `TokenizerInfo`; llguidance:
  `LLTokenizer`; outlines-core: `Vocabulary`) and a first, untimed build (JIT and library warm-up);
- times cold builds (fresh objects, caches off: ours `cache=False`, XGrammar `cache_enabled=False`),
  median of up to `--builds`; ours also from the disk cache and the in-process cache;
- drives the tokens of a valid instance (`benchmarks/data/instances/`, `json.dumps` of it, encoded by the
  vocabulary's tokenizer: the same ids for every engine) through the engine's matcher: at each step it
  times the full mask in the engine's natural form, then advancing by the token; `--reps` passes,
  reset between them, the garbage collector off;
- records each step's mask as packed bits, so the parent can check how often the engines agree.

Whitespace is set as close to ours (at most one space, `[ ]?`, around structural characters) as each
engine allows: llguidance and outlines-core take the pattern `[ ]?` itself; XGrammar takes
`max_whitespace_cnt=1`, i.e. one of space, tab or newline. Prints the tables; writes `benchmarks/results/grammar.json`
and the results section of `docs/grammar_benchmarks.md` only with --write (or --out / --doc PATH).
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.output import add_output_args, outputs, write_text

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "grammar.json"
DOC = ROOT / "docs" / "grammar_benchmarks.md"
SCHEMAS = ("flat", "nested", "formats", "large")
GRAMMARS = (*SCHEMAS, "json")
VOCABS = ("4k", "32k")
ENGINES = ("decspec", "xgrammar", "llguidance", "outlines-core")
WHITESPACE = r"[ ]?"
EAGER = ("xgrammar", "outlines-core")  # llguidance builds lazily: its masks are computed while decoding
DOC_START, DOC_END = "<!-- results:start -->", "<!-- results:end -->"


class Unsupported(Exception):
    """The engine cannot run this grammar (the row's status says why)."""


# --- inputs ------------------------------------------------------------------------------------


def tokenizer_dir(vocab: str) -> Path:
    """The tokenizer folder of `vocab`; the 32k one is trained (about 10 s, deterministic) when it is missing."""
    from decspec.stdlib.models.pretrained import REFERENCE

    if vocab == "4k":
        return REFERENCE / "target"
    out = DATA / "tokenizer32k"
    if not (out / "tokenizer.json").is_file():
        from decspec.stdlib.models.train import corpus_files, read_texts, save_tokenizer, train_tokenizer

        save_tokenizer(train_tokenizer(read_texts(corpus_files()[0]), 32_000), out)
    return out


def load_grammar(name: str) -> tuple[dict | None, str]:
    """(schema, instance text): the schema is None for the any-JSON grammar."""
    schema = None if name == "json" else json.loads((DATA / "schemas" / f"{name}.json").read_text())
    instance = json.loads((DATA / "instances" / f"{'any' if name == 'json' else name}.json").read_text())
    return schema, json.dumps(instance, ensure_ascii=False)


def bits(words: np.ndarray) -> np.ndarray:
    """Packed uint32 words (bit t%32 of word t//32) -> the allowed token ids."""
    return np.flatnonzero(np.unpackbits(np.ascontiguousarray(words).view(np.uint8), bitorder="little"))


# --- engines: setup(dir, vocab, eos) -> ctx; build(ctx, schema) -> compiled; matcher(compiled) -> m;
#     mask(m) -> the natural form (timed); packed(m, natural) -> uint32 [W]; advance(m, token) ----------


class Decspec:
    name, package, form = "decspec", "decspec", "torch.bool [1, V] (`TokenIndex.mask`)"

    def setup(self, path, vocab, eos):
        from decspec.stdlib.grammars import token_bytes
        from decspec.stdlib.models.tokenizer import Tokenizer

        return {"vocab": token_bytes(Tokenizer.from_dir(path)), "eos": eos}

    def build(self, ctx, schema, cache=False):
        from decspec.stdlib.grammars import GrammarError, compile_grammar

        kind, source = ("json_schema", schema) if schema is not None else ("json", None)
        if not cache:  # cold: the schema's automaton too (compile_grammar keeps the last 64 in memory even without the index cache)
            from decspec.stdlib.grammars.json_schema import cached_grammar

            cached_grammar.cache_clear()
        try:
            return compile_grammar(kind, source, ctx["vocab"], ctx["eos"], cache=cache)
        except GrammarError as e:
            if schema is None and "unknown grammar kind" in str(e):
                raise Unsupported("pending (cfg.py: compile_grammar('json', ...) not landed)") from e
            raise

    def matcher(self, index):
        return [index, index.start]

    def reset(self, m):
        m[1] = m[0].start

    def mask(self, m):
        return m[0].mask([m[1]])

    def packed(self, m, natural):
        return np.packbits(natural[0].numpy(), bitorder="little").view(np.uint32)

    def advance(self, m, token):
        m[1] = m[0].next_state([m[1]], [token])[0]
        return int(m[1]) >= 0


class XGrammar:
    name, package, form = "xgrammar", "xgrammar", "int32 bitmask [1, W] torch (`fill_next_token_bitmask`)"

    def setup(self, path, vocab, eos):
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), eos_token="<|endoftext|>")
        return xgr.TokenizerInfo.from_huggingface(hf, vocab_size=len(vocab), stop_token_ids=[eos])

    def build(self, info, schema):
        import xgrammar as xgr

        compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        return compiler.compile_json_schema(schema if schema is not None else {}, any_whitespace=True, max_whitespace_cnt=1)

    def matcher(self, compiled):
        import xgrammar as xgr

        m = xgr.GrammarMatcher(compiled)
        return m, xgr.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)

    def reset(self, m):
        m[0].reset()

    def mask(self, m):
        m[0].fill_next_token_bitmask(m[1])
        return m[1]

    def packed(self, m, natural):
        return natural[0].numpy().view(np.uint32).copy()

    def advance(self, m, token):
        return m[0].accept_token(token)


class LLGuidance:
    name, package, form = "llguidance", "llguidance", "int32 bitmask [1, W] numpy (`llguidance.numpy.fill_next_token_bitmask`)"

    def setup(self, path, vocab, eos):
        import llguidance

        return llguidance.LLTokenizer((path / "tokenizer.json").read_text(), n_vocab=len(vocab), eos_token=eos), len(vocab)

    def build(self, ctx, schema):
        import llguidance

        options = {"whitespace_flexible": False, "whitespace_pattern": WHITESPACE}
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema if schema is not None else {}, defaults=options)
        m = llguidance.LLMatcher(ctx[0], grammar, log_level=0)
        if m.is_error():
            raise Unsupported(f"error: {m.get_error()}")
        return m, ctx[1]

    def matcher(self, compiled):
        from llguidance.numpy import allocate_token_bitmask

        return compiled[0], allocate_token_bitmask(1, compiled[1])

    def reset(self, m):
        m[0].reset()

    def mask(self, m):
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(m[0], m[1])
        return m[1]

    def packed(self, m, natural):
        return natural[0].view(np.uint32).copy()

    def advance(self, m, token):
        return m[0].consume_token(token)


class OutlinesCore:
    name, package, form = "outlines-core", "outlines-core", "int32 bitmask [W] numpy (`Guide.write_mask_into`)"

    def setup(self, path, vocab, eos):
        import outlines_core

        tokens: dict[bytes, list[int]] = {}
        for i, t in enumerate(vocab):
            if t and i != eos:
                tokens.setdefault(t, []).append(i)
        return outlines_core.Vocabulary(eos, tokens), len(vocab)

    def build(self, ctx, schema):
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema

        if schema is None:
            raise Unsupported("unsupported (regex-only engine: no context-free grammars)")
        return outlines_core.Index(build_regex_from_schema(json.dumps(schema), whitespace_pattern=WHITESPACE), ctx[0]), ctx[1]

    def matcher(self, compiled):
        import outlines_core

        return outlines_core.Guide(compiled[0]), np.zeros((compiled[1] + 31) // 32, np.int32)

    def reset(self, m):
        m[0].reset()

    def mask(self, m):
        m[0].write_mask_into(m[1].ctypes.data, m[1].size, 4)
        return m[1]

    def packed(self, m, natural):
        return natural.view(np.uint32).copy()

    def advance(self, m, token):
        m[0].advance(token, return_tokens=False)
        return True


ENGINE_CLASSES = {"decspec": Decspec, "xgrammar": XGrammar, "llguidance": LLGuidance, "outlines-core": OutlinesCore}


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- the worker: one engine, one vocabulary, one grammar, in a fresh process --------------------------


def summary_us(ns: np.ndarray) -> dict:
    us = np.sort(ns.reshape(-1)) / 1e3
    return {"mean_us": float(us.mean()), "p50_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)),
            "max_us": float(us[-1]), "samples": int(us.size)}


def worker(engine_name: str, vocab_name: str, grammar: str, reps: int, builds: int, out: Path) -> None:
    from decspec.stdlib.grammars import token_bytes
    from decspec.stdlib.models.tokenizer import Tokenizer

    path = tokenizer_dir(vocab_name)
    tokenizer = Tokenizer.from_dir(path)
    vocab, eos = token_bytes(tokenizer), tokenizer.eos_token_id
    schema, text = load_grammar(grammar)
    ids = tokenizer.encode(text)
    result = {"engine": engine_name, "vocab": vocab_name, "grammar": grammar, "vocab_size": len(vocab), "tokens": len(ids),
              "ids": ids}
    engine = ENGINE_CLASSES[engine_name]()
    t0 = time.perf_counter()
    ctx = engine.setup(path, vocab, eos)
    result["setup_s"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        compiled = engine.build(ctx, schema)  # warm-up: numba load, library initialization
        engine.mask(engine.matcher(compiled))  # and a first mask (a lazy index's first walk loads the kernel)
        result["first_build_s"] = time.perf_counter() - t0
    except Unsupported as e:
        result["status"] = str(e)
        out.write_text(json.dumps(result))
        return
    wall, cpu, first = [], [], []
    while len(wall) < builds and (not wall or sum(wall) < 20):
        c0, t0 = time.process_time(), time.perf_counter()
        compiled = engine.build(ctx, schema)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        engine.mask(engine.matcher(compiled))  # time to first mask: the build, a matcher and its first mask (lazy engines work here)
        first.append(time.perf_counter() - t0)
        if engine_name == "decspec":  # the next build starts cold: the rows this mask walked belong to this object only
            compiled = None
    if compiled is None:  # a fresh one for the mask passes below
        compiled = engine.build(ctx, schema)
    result.update(build_s=statistics.median(wall), build_cpu_s=statistics.median(cpu), build_runs=wall,
                  first_mask_s=statistics.median(first))
    if engine_name == "decspec":
        result.update(warm_cache(engine, ctx, schema))
    if hasattr(compiled, "num_states"):
        result["index_states"], result["index_bytes"] = compiled.num_states, getattr(compiled, "nbytes", None)

    m = engine.matcher(compiled)  # pass 0, untimed: the masks, and a check that the instance is accepted
    masks = []
    for k, token in enumerate(ids):
        words = engine.packed(m, engine.mask(m))
        masks.append(words)
        if not (words[token >> 5] >> (token & 31)) & 1 or not engine.advance(m, token):
            result["status"] = f"error: rejects the instance at token {k} ({vocab[token]!r})"
            out.write_text(json.dumps(result))
            return
    masks.append(engine.packed(m, engine.mask(m)))
    result["eos_allowed_at_end"] = bool((masks[-1][eos >> 5] >> (eos & 31)) & 1)

    mask_ns = np.zeros((reps, len(ids) + 1), np.int64)
    advance_ns = np.zeros((reps, len(ids)), np.int64)
    clock = time.perf_counter_ns
    gc.disable()
    for r in range(reps):
        engine.reset(m)
        for k, token in enumerate(ids):
            t0 = clock()
            engine.mask(m)
            t1 = clock()
            engine.advance(m, token)
            t2 = clock()
            mask_ns[r, k], advance_ns[r, k] = t1 - t0, t2 - t1
        t0 = clock()
        engine.mask(m)
        mask_ns[r, -1] = clock() - t0
    gc.enable()
    result.update(status="ok", mask=summary_us(mask_ns), first_pass_mask=summary_us(mask_ns[0]), advance=summary_us(advance_ns),
                  step=summary_us(mask_ns[:, :-1] + advance_ns))
    if engine_name == "decspec" and hasattr(compiled, "words"):  # the same mask as packed bits: a row copy
        index, buf, states = compiled, np.empty(compiled.words.shape[1], np.uint32), []
        state = index.start
        for token in ids:
            states.append(state)
            state = int(index.next_state([state], [token])[0])
        ns = np.zeros((reps, len(states)), np.int64)
        for r in range(reps):
            for k, s in enumerate(states):
                t0 = clock()
                np.copyto(buf, index.words[s])
                ns[r, k] = clock() - t0
        result["packed_row_copy"] = summary_us(ns)
    np.save(out.with_suffix(".npy"), np.stack(masks))
    out.write_text(json.dumps(result))


def warm_cache(engine: Decspec, ctx, schema) -> dict:
    """Ours from the disk cache (a fresh process would see this) and from the in-process LRU."""
    from decspec.stdlib.grammars import CACHE

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DECSPEC_CACHE_DIR"] = tmp
        engine.build(ctx, schema, cache=True)  # builds and writes the file
        disk, memory = [], []
        for _ in range(5):
            CACHE.clear()
            t0 = time.perf_counter()
            engine.build(ctx, schema, cache=True)
            disk.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            engine.build(ctx, schema, cache=True)
            memory.append(time.perf_counter() - t0)
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
    return {"warm_disk_s": statistics.median(disk), "warm_memory_s": statistics.median(memory), "cache_file_bytes": size}


# --- the parent: run the workers side by side, compare masks, write results ---------------------------


def run_one(engine: str, vocab: str, grammar: str, args, tmp: Path) -> tuple[dict, np.ndarray | None]:
    row = {"engine": engine, "vocab": vocab, "grammar": grammar}
    package = ENGINE_CLASSES[engine].package
    if engine != "decspec" and version(package) is None:
        return {**row, "status": "not installed"}, None
    out = tmp / f"{engine}-{vocab}-{grammar}.json"
    cmd = [sys.executable, "-m", "benchmarks.grammar", "--worker", engine, vocab, grammar, "--out", str(out),
           "--reps", str(args.reps), "--builds", str(args.builds)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**row, "status": f"timeout (> {args.timeout} s)"}, None
    if proc.returncode != 0 or not out.is_file():
        return {**row, "status": "error: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}, None
    result = json.loads(out.read_text())
    masks = np.load(out.with_suffix(".npy")) if out.with_suffix(".npy").is_file() else None
    return result, masks


def agreement(ours: np.ndarray, theirs: np.ndarray, vocab: list, ids: list[int]) -> dict:
    """How often two engines allow exactly the same tokens, per step; also ignoring tokens with whitespace bytes."""
    n, v = ours.shape[0], len(vocab)
    plain = np.array([t is not None and not any(b in t for b in b" \t\n\r") for t in vocab] + [False] * (32 * ours.shape[1] - v))
    plain_words = np.packbits(plain, bitorder="little").view(np.uint32)
    diff = ours ^ theirs
    exact = int((diff == 0).all(1).sum())
    no_ws = int(((diff & plain_words) == 0).all(1).sum())
    tokens = 1 - float(np.mean([len(bits(d)) for d in diff])) / v
    first = next((k for k in range(n) if diff[k].any()), None)
    example = None
    if first is not None:
        only_ours, only_theirs = bits(ours[first] & ~theirs[first]), bits(theirs[first] & ~ours[first])
        example = {"step": first, "prefix": b"".join(vocab[t] for t in ids[:first]).decode("utf-8", "replace")[-40:],
                   "only_decspec": [repr(vocab[t]) for t in only_ours[:6]], "only_decspec_count": len(only_ours),
                   "only_peer": [repr(vocab[t]) for t in only_theirs[:6]], "only_peer_count": len(only_theirs)}
    return {"steps": n, "exact": exact / n, "ignoring_whitespace_tokens": no_ws / n, "token_level": tokens, "first_difference": example}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", choices=VOCABS, action="append")
    ap.add_argument("--grammar", choices=GRAMMARS, action="append")
    ap.add_argument("--engine", choices=ENGINES, action="append")
    ap.add_argument("--reps", type=int, default=20, help="timed passes over the instance's tokens")
    ap.add_argument("--builds", type=int, default=5, help="cold builds (fewer when they pass 20 s)")
    ap.add_argument("--runs", type=int, default=3, help="whole grids; every time reported is the median over them")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per worker")
    ap.add_argument("--render", action="store_true",
                    help="rewrite the JSON and the doc's results section from the saved JSON, no runs (implies --write)")
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "VOCAB", "GRAMMAR"), help=argparse.SUPPRESS)  # --out: its JSON
    add_output_args(ap, RESULTS, DOC, "--doc")
    args = ap.parse_args()
    if args.render:
        args.write = True
        out, doc = outputs(args, RESULTS, DOC)
        report = json.loads(RESULTS.read_text())
        report["ratios"] = target_ratios(report["rows"])
        write_text(out, json.dumps(report, indent=2) + "\n")
        write_doc(markdown(report), doc)
        return
    if args.worker:
        worker(*args.worker, args.reps, args.builds, args.out)
        return
    from decspec.stdlib.grammars import token_bytes
    from decspec.stdlib.models.tokenizer import Tokenizer

    runs, t_start = [], time.time()
    for run in range(args.runs):  # whole grids, one after another: each cell's runs are minutes apart
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for vocab_name in args.vocab or VOCABS:
                vocab = token_bytes(Tokenizer.from_dir(tokenizer_dir(vocab_name)))
                for grammar in args.grammar or GRAMMARS:
                    results = {}
                    for engine in args.engine or ENGINES:
                        row, masks = run_one(engine, vocab_name, grammar, args, Path(tmp))
                        results[engine] = (row, masks)
                        print(f"run {run + 1}/{args.runs} {line(row)}", flush=True)
                    ours = results.get("decspec", (None, None))[1]
                    for engine, (row, masks) in results.items():
                        if engine != "decspec" and masks is not None and ours is not None:
                            row["agreement"] = agreement(ours, masks, vocab, row["ids"])
                        row.pop("ids", None)
                        rows.append(row)
        runs.append(rows)
    rows = median_rows(runs)
    ratios = target_ratios(rows)
    report = {"command": " ".join(["python -m benchmarks.grammar", *sys.argv[1:]]), "machine": machine(),
              "versions": versions(), "reps": args.reps, "runs": args.runs, "minutes": (time.time() - t_start) / 60,
              "natural_forms": {e: ENGINE_CLASSES[e].form for e in ENGINES}, "rows": rows, "ratios": ratios}
    print(markdown(report))
    out, doc = outputs(args, RESULTS, DOC)
    if out:
        write_text(out, json.dumps(report, indent=2) + "\n")
    if doc:
        write_doc(markdown(report), doc)


TIMES = ("setup_s", "first_build_s", "build_s", "build_cpu_s", "first_mask_s", "warm_disk_s", "warm_memory_s")
STEP_TIMES = ("mask", "first_pass_mask", "advance", "step", "packed_row_copy")


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """One row per cell: the first run's row with every time replaced by its median over the runs that
    finished; `mask_p99_runs` keeps the spread."""
    out = []
    for i, row in enumerate(runs[0]):
        ok = [r[i] for r in runs if r[i].get("status") == "ok"]
        if not ok:
            out.append(row)
            continue
        merged = dict(ok[0])
        for key in TIMES:
            if key in merged:
                merged[key] = statistics.median(r[key] for r in ok)
        for key in STEP_TIMES:
            if key in merged:
                merged[key] = {k: statistics.median(r[key][k] for r in ok) for k in merged[key]}
        merged["runs_ok"], merged["mask_p99_runs"] = len(ok), [r["mask"]["p99_us"] for r in ok]
        out.append(merged)
    return out


def target_ratios(rows: list[dict]) -> list[dict]:
    """Issue 7's targets, per (vocabulary, grammar): our p99 mask time and our cold build over the fastest peer's."""
    out = []
    for key in sorted({(r["vocab"], r["grammar"]) for r in rows}, key=lambda k: (VOCABS.index(k[0]), GRAMMARS.index(k[1]))):
        group = [r for r in rows if (r["vocab"], r["grammar"]) == key and r.get("status") == "ok"]
        ours = next((r for r in group if r["engine"] == "decspec"), None)
        peers = [r for r in group if r["engine"] != "decspec"]
        if ours is None or not peers:
            continue
        p99 = min(peers, key=lambda r: r["mask"]["p99_us"])
        build = min(peers, key=lambda r: r["build_s"])
        ratio = {"vocab": key[0], "grammar": key[1], "p99_mask_ratio": ours["mask"]["p99_us"] / p99["mask"]["p99_us"],
                 "fastest_p99_peer": p99["engine"], "build_ratio": ours["build_s"] / build["build_s"],
                 "fastest_build_peer": build["engine"]}
        xgr = next((r for r in peers if r["engine"] == "xgrammar" and "first_mask_s" in r), None)
        if xgr is not None and "first_mask_s" in ours:  # issue 15's target: time to first mask within 2x XGrammar's
            ratio.update(first_mask_ratio_xgrammar=ours["first_mask_s"] / xgr["first_mask_s"])
        eager = [r for r in peers if r["engine"] in EAGER]  # the peers that precompute masks at build time, as we do
        if eager:
            e = min(eager, key=lambda r: r["build_s"])
            ratio.update(eager_build_ratio=ours["build_s"] / e["build_s"], fastest_eager_build_peer=e["engine"])
        out.append(ratio)
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def versions() -> dict:
    names = ("torch", "numpy", "numba", "tokenizers", "transformers", "xgrammar", "apache-tvm-ffi", "llguidance", "outlines-core")
    return {n: version(n) for n in names}


def line(r: dict) -> str:
    head = f"{r['vocab']:>3} {r['grammar']:<8} {r['engine']:<14}"
    if r.get("status") != "ok":
        return f"{head} {r.get('status')}"
    return (f"{head} build {1e3 * r['build_s']:8.1f} ms  first mask {1e3 * r.get('first_mask_s', float('nan')):8.1f} ms  mask mean {r['mask']['mean_us']:7.1f} us p99 {r['mask']['p99_us']:8.1f} us"
            f"  advance {r['advance']['mean_us']:6.1f} us")


def markdown(report: dict) -> str:
    v = report["versions"]
    lines = [f"Command: `{report['command']}` ({report['minutes']:.1f} min, {report['runs']} runs of the whole grid; "
             f"every time is the median over the runs). Machine: {report['machine']}.",
             "Versions: " + ", ".join(f"{k} {x or 'not installed'}" for k, x in v.items()) + ".", "",
             f"Mask and advance times: {report['reps']} passes over the instance's tokens (mask computed at every "
             "step and once after the last token), microseconds. Build: median cold build, milliseconds. "
             "Agreement: fraction of steps where the engine allows exactly decspec's token set "
             "(exact / ignoring tokens that contain whitespace bytes).", "",
             "| vocab | grammar | engine | build ms (cpu ms) | time to first mask ms | mask mean µs | mask p50 | mask p99 (runs' range) | 1st-pass mask mean | advance mean µs | agreement exact / no-ws |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        head = f"| {r['vocab']} | {r['grammar']} | {r['engine']} |"
        if r.get("status") != "ok":
            lines.append(f"{head} {r.get('status')} | | | | | | | |")
            continue
        m, a = r["mask"], r.get("agreement")
        agree = "—" if a is None else f"{100 * a['exact']:.0f}% / {100 * a['ignoring_whitespace_tokens']:.0f}%"
        build = f"{1e3 * r['build_s']:.1f} ({1e3 * r['build_cpu_s']:.0f})"
        spread = r.get("mask_p99_runs", [m["p99_us"]])
        ttfm = f"{1e3 * r['first_mask_s']:.1f}" if "first_mask_s" in r else "—"
        lines.append(f"{head} {build} | {ttfm} | {m['mean_us']:.1f} | {m['p50_us']:.1f} | {m['p99_us']:.1f} ({min(spread):.0f}–{max(spread):.0f}) | "
                     f"{r['first_pass_mask']['mean_us']:.1f} | {r['advance']['mean_us']:.1f} | {agree} |")
    lines += ["", "decspec extras: vocabulary setup, warm cache loads, and the packed form of the same mask (a row copy of "
              "`index.words`, the form the peers return):", "",
              "| vocab | grammar | index states | index MiB | warm disk ms | warm memory ms | packed row copy mean / p99 µs |",
              "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if r["engine"] == "decspec" and r.get("status") == "ok":
            pr = r.get("packed_row_copy", {})
            lines.append(f"| {r['vocab']} | {r['grammar']} | {r.get('index_states', '—')} | {(r.get('index_bytes') or 0) / 2**20:.2f} | "
                         f"{1e3 * r['warm_disk_s']:.1f} | {1e3 * r['warm_memory_s']:.2f} | "
                         f"{pr.get('mean_us', float('nan')):.2f} / {pr.get('p99_us', float('nan')):.2f} |")
    lines += ["", "Vocabulary setup (once per tokenizer), ms:", "", "| vocab | " + " | ".join(ENGINES) + " |",
              "|---|" + "---|" * len(ENGINES)]
    for vocab in VOCABS:
        cells = []
        for e in ENGINES:
            s = [r["setup_s"] for r in report["rows"] if r["vocab"] == vocab and r["engine"] == e and "setup_s" in r]
            cells.append(f"{1e3 * statistics.median(s):.0f}" if s else "—")
        if any(c != "—" for c in cells):
            lines.append(f"| {vocab} | " + " | ".join(cells) + " |")
    lines += ["", "Issue 7 targets (≤ 2× the fastest peer): decspec / fastest peer.", "",
              "| vocab | grammar | p99 mask ratio (fastest peer) | cold build ratio (fastest peer) | cold build ratio (fastest precomputing peer) | time-to-first-mask ratio (XGrammar) |",
              "|---|---|---|---|---|---|"]
    for q in report["ratios"]:
        eager = f"{q['eager_build_ratio']:.2f} ({q['fastest_eager_build_peer']})" if "eager_build_ratio" in q else "—"
        first = f"{q['first_mask_ratio_xgrammar']:.2f}" if "first_mask_ratio_xgrammar" in q else "—"
        lines.append(f"| {q['vocab']} | {q['grammar']} | {q['p99_mask_ratio']:.2f} ({q['fastest_p99_peer']}) | "
                     f"{q['build_ratio']:.2f} ({q['fastest_build_peer']}) | {eager} | {first} |")
    diffs = [r for r in report["rows"] if r.get("agreement") and r["agreement"]["first_difference"]]
    if diffs:
        lines += ["", "First disagreement with decspec, per row (up to 6 tokens each side):", ""]
        for r in diffs:
            d = r["agreement"]["first_difference"]
            lines.append(f"- {r['vocab']} {r['grammar']} {r['engine']}: step {d['step']} after `…{d['prefix']}`: only decspec "
                         f"{d['only_decspec_count']} {' '.join(d['only_decspec'])}; only {r['engine']} {d['only_peer_count']} "
                         f"{' '.join(d['only_peer'])}")
    return "\n".join(lines)


def write_doc(results: str, doc: Path = DOC) -> None:
    """Replace the generated section of `doc` (docs/grammar_benchmarks.md: the rest of the file is hand-written)."""
    text = doc.read_text() if doc.is_file() else f"# Grammar engines side by side\n\n{DOC_START}\n{DOC_END}\n"
    head, _, rest = text.partition(DOC_START)
    _, _, tail = rest.partition(DOC_END)
    write_text(doc, f"{head}{DOC_START}\n{results}\n{DOC_END}{tail}")


if __name__ == "__main__":
    main()
