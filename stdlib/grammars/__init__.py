"""Structured output, the grammar core (issue 7): regexes, JSON Schemas and choice lists compiled to a
token-level index over a tokenizer's vocabulary. See docs/grammars.md.

    >>> index = compile_grammar("choice", ["yes", "no"], [b"y", b"es", b"no", b"n"], eos_id=None, cache=False)
    >>> index.allowed(index.start).tolist()  # not b"n": no token spells the "o" it would need
    [0, 2]
"""
from decspec.stdlib.grammars.automaton import ByteDFA
from decspec.stdlib.grammars.cache import CACHE, IndexCache
from decspec.stdlib.grammars.cfg import JSON_GRAMMAR, CFGMatcher
from decspec.stdlib.grammars.compile import KINDS, compile_grammar, grammar_regex
from decspec.stdlib.grammars.errors import GrammarError
from decspec.stdlib.grammars.index import TokenIndex
from decspec.stdlib.grammars.json_schema import choice_to_regex, schema_to_dfa, schema_to_regex
from decspec.stdlib.grammars.regex import compile_regex, parse_regex
from decspec.stdlib.grammars.vocab import token_bytes

__all__ = [
    "ByteDFA", "CACHE", "CFGMatcher", "GrammarError", "IndexCache", "JSON_GRAMMAR", "KINDS", "TokenIndex",
    "choice_to_regex", "compile_grammar", "compile_regex", "grammar_regex", "parse_regex", "schema_to_dfa", "schema_to_regex",
    "token_bytes",
]
