r"""Grammars: the `grammar` slot's components (structured output).

A grammar component names a language: `regex("[a-z_][a-z0-9_]*")`, `json_schema("person.json")`,
`choice(["yes", "no"])`, and through the Lark context-free matcher `json`, `lark('''...''')` and
`lark_file("g.lark")` (a clear "not yet" error where stdlib/grammars/cfg.py is missing). Its lowering
resolves the component to a `GrammarSource` (which `compile_grammar` kind, which source) and checks what needs no vocabulary: the regex's syntax, the schema's keywords, an
empty language; errors name the component's line and column. `bind_grammar` compiles the source into a
`Matcher` over the target's vocabulary when the spec is compiled. The lowering core (compiler/lower.py)
masks every model's logits with it (`grammar_state`, `grammar_mask`) before the sampler pipeline.

The grammar core (`decspec.stdlib.grammars`, numba) is imported on first use only, so specs without a
grammar never load it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decspec.dsl.diagnostics import DecError, excerpt
from decspec.dsl.files import UnreadableFile, read_text
from decspec.stdlib.registry import Component, Contract, Param, register

SLOT = "grammar"  # the IR names a grammar by the slot that holds it
_CONTRACT = Contract(None, "a grammar defines the target distribution (the target masked to its language), as samplers do; "
                           "its mask is applied to the target and to every draft alike")


@dataclass(frozen=True)
class GrammarSource:
    """What `compile_grammar(kind, source, vocab, eos_id)` compiles: kind "regex", "json_schema", "choice", "lark" or "json"."""

    kind: str
    source: Any


def grammar_source(inst) -> GrammarSource:
    """The checked source of a grammar component; DecError at the component's span when it is malformed."""
    return inst.component.lower(None, inst)


def _where(inst) -> Path:
    """The folder files named by `inst` are relative to: its .dec file's, else the current one."""
    name = inst.span.source.name if inst.span is not None else ""
    return Path(name).parent if name and Path(name).is_file() else Path.cwd()


def _read(inst, path: str, what: str, expected: str) -> str:
    """The text of a file the component names (a regular UTF-8 file of bounded size: dsl/files.py)."""
    try:
        return read_text(_where(inst) / path, expected)
    except UnreadableFile as e:
        raise DecError(f"cannot read {what} {path!r}: {e}", inst.span) from None


def _located(inst, error) -> DecError:
    """A grammar core error (no position) at the grammar component's span."""
    hint = error.diagnostics[0].hint if error.diagnostics else None
    return DecError(getattr(error, "message", str(error)), inst.span, hint=hint)


def accepts_nothing(node) -> bool:
    """Whether a regex syntax tree (regex.py's Chars / Seq / Alt / Repeat) matches no string at all."""
    from decspec.stdlib.grammars.regex import Alt, Chars, Repeat, Seq

    if isinstance(node, Chars):
        return not node.ranges
    if isinstance(node, Seq):
        return any(accepts_nothing(n) for n in node.items)
    if isinstance(node, Alt):
        return all(accepts_nothing(n) for n in node.options)
    assert isinstance(node, Repeat)
    return node.min > 0 and accepts_nothing(node.item)


def _regular(inst, kind: str, source: Any) -> GrammarSource:
    """Check a regex-backed grammar without a vocabulary: its regex parses and matches something."""
    from decspec.stdlib.grammars import GrammarError, grammar_regex, parse_regex

    try:
        pattern = grammar_regex(kind, source)
        if accepts_nothing(parse_regex(pattern)):
            raise GrammarError(f'regex "{excerpt(pattern, 80)}" accepts nothing: no string matches it')
    except GrammarError as e:
        raise _located(inst, e) from None
    return GrammarSource(kind, source)


def _schema(inst, schema: Any) -> GrammarSource:
    """Check a JSON Schema (its JSON text, or the values) without a vocabulary: it reads as a document the
    compiler takes (json_schema/document.py), it compiles, and something is valid under it."""
    from decspec.stdlib.grammars import GrammarError
    from decspec.stdlib.grammars.json_schema import schema_grammar

    try:
        schema_grammar(schema)
    except GrammarError as e:
        raise _located(inst, e) from None
    return GrammarSource("json_schema", schema)


def cfg_available(kind: str) -> bool:
    """Whether `compile_grammar` knows this context-free kind ("lark", "json": the Lark matcher, stdlib/grammars/cfg.py)."""
    from decspec.stdlib.grammars import compile as core

    return kind in core.KINDS


def _context_free(inst, kind: str, text: str | None) -> GrammarSource:
    """A Lark-backed grammar: checked when it is compiled over the vocabulary (errors still at the component)."""
    if not cfg_available(kind):
        raise DecError(f"grammar '{inst.name}' is not yet supported: it needs the Lark context-free matcher "
                       "(stdlib/grammars/cfg.py)", inst.span, hint="use regex(...), json_schema(...) or choice([...]) meanwhile")
    return GrammarSource(kind, text)


def lower_regex(lw, inst) -> GrammarSource:
    return _regular(inst, "regex", inst.arg("pattern"))


def lower_json_schema(lw, inst) -> GrammarSource:
    schema = inst.arg("schema")
    inline = schema.lstrip().startswith("{")
    text = schema if inline else _read(inst, schema, "JSON schema file", "a JSON Schema")
    try:
        return _schema(inst, text)  # read by json_schema.load: JSON errors name a position only, never the text
    except DecError as e:
        if inline:
            raise
        d = e.diagnostics[0]
        raise DecError(f"JSON schema file {schema!r}: {d.message}", d.span, hint=d.hint) from None


def lower_choice(lw, inst) -> GrammarSource:
    return _regular(inst, "choice", list(inst.arg("options")))


def lower_json(lw, inst) -> GrammarSource:
    return _context_free(inst, "json", None)


def lower_lark(lw, inst) -> GrammarSource:
    source = _context_free(inst, "lark", inst.arg("grammar"))
    from decspec.stdlib.grammars.cfg import LarkText

    return GrammarSource("lark", LarkText(source.source, _where(inst)))  # its %imports: from the spec's folder


def lower_lark_file(lw, inst) -> GrammarSource:
    _context_free(inst, "lark", None)
    from decspec.stdlib.grammars.cfg import LarkText

    text = _read(inst, inst.arg("path"), "Lark grammar file", "a Lark grammar")
    return GrammarSource("lark", LarkText(text, (_where(inst) / inst.arg("path")).parent))  # %imports: from its folder


def bind_grammar(spec, target, vocab: Any = None) -> dict[str, Any]:
    """{slot: Matcher} for a spec with a grammar ({} without): its source compiled over the target's
    vocabulary, from `vocab` (list[bytes | None], one per id) or else the target's tokenizer; EOS is the
    target's `eos_token_id`. Errors (no vocabulary, no EOS, a vocabulary that cannot express the
    grammar) are DecErrors at the grammar component."""
    inst = spec.slot(SLOT)
    if inst is None:
        return {}
    source = grammar_source(inst)
    tokens = vocab if vocab is not None else getattr(target, "tokenizer", None)
    if tokens is None:
        raise DecError("the grammar needs the target's vocabulary as bytes, but the target model has no tokenizer", inst.span,
                       hint="pass vocab=[b'...', ...] (one bytes or None per token id) to decspec.compile")
    eos = getattr(target, "eos_token_id", None)
    if eos is None:
        raise DecError("grammar-constrained decoding needs an EOS token (the output ends where the grammar accepts), "
                       "but the target model has none", inst.span, hint="give the target model an eos_token_id")
    from decspec.stdlib.grammars import GrammarError, compile_grammar

    try:
        matcher = compile_grammar(source.kind, source.source, list(tokens) if isinstance(tokens, tuple) else tokens, eos)
    except GrammarError as e:
        raise _located(inst, e) from None
    except TypeError as e:  # token_bytes: neither a tokenizers-based tokenizer nor a list of bytes
        raise DecError(str(e), inst.span) from None
    if matcher.vocab_size > target.vocab_size:
        raise DecError(f"the grammar's vocabulary has {matcher.vocab_size} tokens, but the target model only {target.vocab_size}",
                       inst.span)
    return {SLOT: matcher}


def _register(name: str, params: tuple, doc: str, lower) -> None:
    register(Component("grammar", name, params, doc, _CONTRACT, lower))


_register("regex", (Param("pattern", "str", doc="Python `re` syntax, full match; raw in a triple-quoted string"),),
          "Output that fully matches a regex (ASCII `\\d \\w \\s`; no anchors, lookaround or backreferences).", lower_regex)
_register("json_schema", (Param("schema", "str", doc="a JSON Schema file (relative to the .dec file), or the schema's JSON text (starting with `{`)"),),
          "JSON text valid under a JSON Schema (closed objects, properties in declared order; see docs/grammars.md for the supported keywords).",
          lower_json_schema)
_register("choice", (Param("options", "list[str]", doc="the strings allowed, literally"),),
          "Exactly one of the given strings.", lower_choice)
_register("json", (), "Any JSON value (a context-free grammar, through the Lark matcher).", lower_json)
_register("lark", (Param("grammar", "str", doc="a Lark grammar, e.g. in a triple-quoted string; `start` is the start rule"),),
          "Output in the language of a Lark context-free grammar (LALR(1); see docs/grammars.md).", lower_lark)
_register("lark_file", (Param("path", "str", doc="a .lark file, relative to the .dec file"),),
          "Like `lark`, with the grammar read from a file.", lower_lark_file)
