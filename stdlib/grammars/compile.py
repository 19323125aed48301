"""`compile_grammar`: a regex, a JSON Schema or a choice list -> a `TokenIndex` over a vocabulary, cached; a
Lark grammar ("lark") or any JSON value ("json") -> a `CFGMatcher` (cfg.py), kept in memory only.

    from decspec.stdlib.grammars import compile_grammar
    index = compile_grammar("json_schema", {"type": "object", "properties": {"ok": {"type": "boolean"}}},
                            tokenizer, eos_id=tokenizer.eos_token_id)
"""
from __future__ import annotations

import json
from typing import Any

from decspec.stdlib.grammars.automaton import ByteDFA
from decspec.stdlib.grammars.cache import CACHE, cache_key, vocab_hash
from decspec.stdlib.grammars.cfg import JSON_GRAMMAR, CFGMatcher
from decspec.stdlib.grammars.errors import GrammarError
from decspec.stdlib.grammars.index import TokenIndex
from decspec.stdlib.grammars.json_schema import SchemaGrammar, choice_to_regex, load, schema_grammar
from decspec.stdlib.grammars.regex import compile_regex
from decspec.stdlib.grammars.vocab import token_bytes

KINDS = ("regex", "json_schema", "choice", "lark", "json")
CONTEXT_FREE = ("lark", "json")  # no regex: a CFGMatcher discovers its states (and masks) as decoding goes


def grammar_regex(kind: str, source: Any) -> str:
    """The regex a grammar of `kind` ("regex" or "choice") compiles through (a JSON Schema compiles straight
    to an automaton: `schema_to_dfa`)."""
    if kind == "regex":
        if not isinstance(source, str):
            raise GrammarError(f"a regex grammar needs a pattern string, got {type(source).__name__}")
        return source
    if kind == "json_schema":
        raise GrammarError("a json_schema grammar compiles to an automaton (schema_to_dfa), not through a regex")
    if kind == "choice":
        return choice_to_regex(list(source) if isinstance(source, (list, tuple)) else source)
    if kind in CONTEXT_FREE:
        raise GrammarError(f"a {kind} grammar is context-free: it has no regex")
    raise GrammarError(f"unknown grammar kind {kind!r}; expected one of {', '.join(KINDS)}")


def grammar_automaton(kind: str, source: Any) -> ByteDFA | SchemaGrammar | None:
    """The automaton a grammar's token index is built from: the byte DFA of a regex, a choice or a JSON Schema (a
    SchemaGrammar for a recursive schema), or None for a context-free kind (a CFGMatcher needs none)."""
    if kind in CONTEXT_FREE:
        return None
    if kind == "json_schema":
        return schema_grammar(json.dumps(load(source)))
    return compile_regex(grammar_regex(kind, source))


def compile_grammar(kind: str, source: Any, vocab: Any, eos_id: int | None = None, *,
                    cache: bool = True) -> TokenIndex | CFGMatcher:
    """The token index of a grammar over `vocab` (a list of bytes, or a tokenizer: see `token_bytes`).

    `eos_id` None with a tokenizer takes the tokenizer's EOS; with a plain list it means "no EOS token".
    With `cache`, a grammar built before (same kind, source, vocabulary, EOS id) comes from memory or disk.
    "lark" (source: the grammar's text, start rule `start`) and "json" (source: None) give a `CFGMatcher`;
    its masks are found lazily, so it is cached in memory only (the same LRU). So does a recursive JSON
    Schema (json_schema/recursive.py).
    """
    if eos_id is None and not isinstance(vocab, (list, tuple)):
        eos_id = getattr(vocab, "eos_token_id", None)
    tokens = token_bytes(vocab)
    if kind in CONTEXT_FREE:
        if kind == "json" and source is not None:
            raise GrammarError(f"the json grammar takes no source (any JSON value), got {source!r}")
        text = JSON_GRAMMAR if kind == "json" else source
        build_cfg = lambda: CFGMatcher.build(text, tokens, eos_id)  # noqa: E731
        if not cache:
            return build_cfg()
        key = cache_key("lark", json.dumps([text, getattr(text, "folder", None)]), vocab_hash(tokens), eos_id)  # %imports: cfg.LarkText
        return CACHE.get_or_build(key, build_cfg, disk=False)
    if kind == "json_schema":
        text = json.dumps(load(source))  # the schema's own key order: properties are written in declared order
        grammar = schema_grammar(text)
        if isinstance(grammar, SchemaGrammar):  # recursive: a CFG matcher, kept in memory only (like "lark")
            build_cfg = lambda: grammar.matcher(tokens, eos_id)  # noqa: E731
            if not cache:
                return build_cfg()
            return CACHE.get_or_build(cache_key(kind, text, vocab_hash(tokens), eos_id), build_cfg, disk=False)
        build = lambda: TokenIndex.build(grammar, tokens, eos_id)  # noqa: E731
    else:
        text = json.dumps(grammar_regex(kind, source))
        build = lambda: TokenIndex.build(grammar_automaton(kind, source), tokens, eos_id)  # noqa: E731
    if not cache:
        return build()
    key = cache_key(kind, text, vocab_hash(tokens), eos_id)
    return CACHE.get_or_build(key, build)
