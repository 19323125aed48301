"""JSON Schema -> the byte automaton of the JSON texts valid under it; a list of literal choices -> regex.

    >>> dfa = schema_to_dfa({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    >>> [dfa.matches(s) for s in ('{"ok": true}', '{"ok":false}', '{"ok": 1}', '{}', '{"ok": true, "x": 1}')]
    [True, True, False, False, False]
    >>> choice_to_regex(["red", "green"])
    '(?:red|green)'

**Zero false accepts**: every text the automaton accepts is a valid instance. Each keyword is applied
exactly where keywords combine (allOf, anyOf, oneOf, not, if/then/else, $ref beside other keywords, enum
beside type, ...), or the schema is refused with a `GrammarError` naming the keyword's JSON path. Where a
language would be looser than the schema the grammar takes a documented stricter subset instead (see
docs/grammars.md): closed objects with declared properties in declared order, numbers without exponent
where bounds apply, unconstrained values nested at most `ANY_DEPTH` deep, `format` asserted.

A recursive schema (a value inside a value of the same schema) is context-free: it compiles to a Lark
grammar for the CFG matcher (recursive.py), its rule-free parts still automata.

The pipeline: normalize.py reads each schema object into a union of conjunctions (conj.py); lower.py and
containers.py turn those into languages (lang.py: regex trees, DFA products, counting graphs) one JSON
type at a time; strings.py, numbers.py, formats.py and values.py hold the pieces.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from decspec.stdlib.grammars.automaton import ByteDFA
from decspec.stdlib.grammars.errors import GrammarError
from decspec.stdlib.grammars.json_schema.document import check_document, parse
from decspec.stdlib.grammars.json_schema.draft4 import as_draft7
from decspec.stdlib.grammars.json_schema.formats import FORMATS
from decspec.stdlib.grammars.json_schema.lang import has_rule, to_dfa, to_regex
from decspec.stdlib.grammars.json_schema.lower import Lowerer
from decspec.stdlib.grammars.json_schema.normalize import ANNOTATIONS, HANDLERS, OBJECT_GROUP, ARRAY_GROUP, LATER
from decspec.stdlib.grammars.json_schema.recursive import LarkWriter, SchemaGrammar
from decspec.stdlib.grammars.json_schema.refs import Index, Located
from decspec.stdlib.grammars.json_schema.values import ANY_DEPTH, shown

SUPPORTED = tuple(dict.fromkeys([*HANDLERS, *OBJECT_GROUP, *ARRAY_GROUP, *LATER]))
UNSUPPORTED = ("$recursiveRef", "$recursiveAnchor")
DRAFTS = {"draft/2020-12": 2020, "draft-07": 7, "draft-06": 7, "draft-04": 4}

__all__ = ["ANNOTATIONS", "ANY_DEPTH", "FORMATS", "SUPPORTED", "UNSUPPORTED", "SchemaGrammar", "choice_to_regex",
           "compile_schema", "schema_draft", "schema_grammar", "schema_to_dfa", "schema_to_regex"]


def choice_to_regex(options: list[str]) -> str:
    """A regex accepting exactly one of the literal strings in `options`."""
    if not options or not all(isinstance(o, str) for o in options):
        raise GrammarError("choice([...]) needs a non-empty list of strings")
    return "(?:" + "|".join(re.escape(o) for o in options) + ")"


def load(schema: dict | bool | str) -> Any:
    """A schema document, from its JSON text or as Python values, checked (document.py: depth, numbers)."""
    if isinstance(schema, str):
        try:
            schema = parse(schema)
        except json.JSONDecodeError as e:
            raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
    else:
        check_document(schema)
    if not isinstance(schema, (dict, bool)):
        raise GrammarError("$: a JSON schema must be an object (or true / false)")
    return schema


def schema_draft(schema: Any, draft: int | None = None) -> int:
    """The draft a schema is read with: `draft` when given (2020, 7 or 4), else its `$schema`, else 2020-12."""
    if draft is not None:
        if draft not in (2020, 7, 4):
            raise GrammarError(f"draft {draft} is not supported; drafts 2020 (2020-12), 7 and 4 are")
        return draft
    declared = schema.get("$schema") if isinstance(schema, dict) else None
    if declared is None:
        return 2020
    for marker, number in DRAFTS.items():
        if isinstance(declared, str) and marker in declared:
            return number
    raise GrammarError(f"$.$schema: {shown(declared)} is not a supported draft; drafts 2020-12, 7 (and 6) and 4 are")


def read(schema: Any, draft: int | None = None, remotes: dict[str, Any] | None = None) -> tuple[Any, int, dict]:
    """The document, the draft the compiler reads it with and the remotes: a draft 4 document is rewritten as
    draft 7 (draft4.py), and so are the remotes that declare no other draft (those are refused where reached)."""
    version, remotes = schema_draft(schema, draft), dict(remotes or {})
    if version != 4:
        return schema, version, remotes
    for uri, doc in remotes.items():
        declared = doc.get("$schema") if isinstance(doc, dict) else None
        if declared is None or isinstance(declared, str) and "draft-04" in declared:
            remotes[uri] = as_draft7(doc)
    return as_draft7(schema), 7, remotes


def compile_schema(schema: dict | bool | str, *, draft: int | None = None,
                   remotes: dict[str, Any] | None = None) -> ByteDFA | SchemaGrammar | None:
    """The language of the texts valid under `schema`: its minimal DFA, a `SchemaGrammar` (Lark grammar
    text and terminal DFAs, for the CFG matcher) when the schema is recursive, or None when nothing is valid
    (a schema like `false`). Both have `matches(text)`.

    `remotes` maps absolute URIs to schema documents that `$ref` may name (nothing is fetched)."""
    for uri, document in (remotes or {}).items():
        check_document(document, f"remote {shown(uri)}")
    schema, version, remotes = read(load(schema), draft, remotes)
    lowerer = Lowerer(Index(schema, version, remotes), version)
    node = lowerer.value(lowerer.lower(Located(schema, "$"))).node
    if has_rule(node) or lowerer.rules:
        return LarkWriter(lowerer.rules).grammar(node)
    return to_dfa(node)


@lru_cache(maxsize=64)
def cached_grammar(text: str, draft: int | None) -> ByteDFA | SchemaGrammar:
    grammar = compile_schema(json.loads(text), draft=draft)
    if grammar is None:
        raise GrammarError("the JSON schema accepts nothing: no JSON value is valid under it")
    return grammar


def schema_grammar(schema: dict | bool | str, *, draft: int | None = None) -> ByteDFA | SchemaGrammar:
    """`compile_schema` for decoding (cached): GrammarError when nothing is valid."""
    return cached_grammar(json.dumps(load(schema)), draft)


def schema_to_dfa(schema: dict | bool | str, *, draft: int | None = None) -> ByteDFA:
    """The DFA of the texts valid under `schema` (a dict, or its JSON text); GrammarError when none is, or
    when the schema is recursive (its language is context-free: use `schema_grammar`)."""
    grammar = schema_grammar(schema, draft=draft)
    if isinstance(grammar, SchemaGrammar):
        raise GrammarError("the JSON schema is recursive: its language is context-free, not an automaton; "
                           "it compiles to a Lark grammar (schema_grammar, compile_grammar)")
    return grammar


def schema_to_regex(schema: dict | bool | str) -> str:
    """The same language as a regex, for the schemas whose language needs no automaton operation (no
    counted containers, intersections or complements: mostly scalars); GrammarError otherwise."""
    schema, version, _ = read(load(schema))
    lowerer = Lowerer(Index(schema, version), version)
    regex = to_regex(lowerer.value(lowerer.lower(Located(schema, "$"))).node)
    if regex is None:
        raise GrammarError("this JSON schema compiles through automaton operations and has no regex form; "
                           "use schema_to_dfa")
    return regex
