"""Recursive schemas: a language with `RuleRef`s (a value that contains a value of the same schema) is
context-free, so it is written as a Lark grammar for the CFG matcher (cfg.py). Each recursive rule and
each `Graph` state is a Lark rule; every maximal part without a rule reference is one terminal, given to
the matcher as its DFA (`terminals`), so the language is exactly the one the trees describe.

    >>> from decspec.stdlib.grammars.json_schema import compile_schema
    >>> tree = compile_schema({"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}})
    >>> [tree.matches(s) for s in ('{"kids": [{}, {"kids": [{"kids": []}]}]}', '{"kids": [1]}')]
    [True, False]

Lexing is Lark's contextual, longest-match one (cfg.py): terminals meet only where a rule reference
separates them, and there JSON punctuation (`{`, `[`, `,`, `:`, the closing brackets) delimits them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from decspec.stdlib.grammars.automaton import ByteDFA
from decspec.stdlib.grammars.errors import GrammarError
from decspec.stdlib.grammars.json_schema.lang import (EPSILON, Graph, RuleRef, has_rule, is_empty_tree, minus, to_dfa)
from decspec.stdlib.grammars.regex import Alt, Repeat, Seq


@dataclass
class SchemaGrammar:
    """A recursive schema's language: Lark grammar text (start rule `start`) and its terminals' DFAs."""

    text: str
    terminals: dict[str, ByteDFA]
    _matcher: object = field(default=None, repr=False)

    def matcher(self, vocab: list, eos_id: int | None):
        from decspec.stdlib.grammars.cfg import CFGMatcher
        return CFGMatcher.build(self.text, vocab, eos_id, terminals=self.terminals)

    def matches(self, text: str | bytes) -> bool:
        """Full match of a text (UTF-8 when a str), through a matcher over the 256 single bytes."""
        if self._matcher is None:
            self._matcher = self.matcher([bytes([b]) for b in range(256)] + [None], 256)
        m = self._matcher
        state = m.walk(m.start, text.encode() if isinstance(text, str) else text)
        return state >= 0 and m.is_accepting(state)


class LarkWriter:
    """Trees with rule references -> Lark rules; rule-free parts -> terminals."""

    def __init__(self, rules: dict[str, object]):
        self.rules = rules
        self.terminals: dict[str, ByteDFA] = {}
        self.lines: list[str] = []
        self.graphs = 0
        self.empty = {name for name, node in rules.items() if is_empty_tree(node)}

    def terminal(self, node) -> str | None:
        """A terminal for a rule-free tree: its name, with `?` when it also accepts the empty string; "" for
        the empty string alone; None when it accepts nothing."""
        dfa = to_dfa(node)
        if dfa is None:
            return None
        optional = bool(dfa.accepting[dfa.start])
        if optional:
            dfa = to_dfa(minus(node, EPSILON))
            if dfa is None:
                return ""
        name = f"T{len(self.terminals)}"
        self.terminals[name] = dfa
        return name + ("?" if optional else "")

    def expr(self, node) -> str | None:
        """A Lark expression of `node` ("" = the empty string, None = nothing)."""
        if not has_rule(node):
            return self.terminal(node)
        if isinstance(node, RuleRef):
            return None if node.name in self.empty else node.name
        if isinstance(node, Seq):
            parts, run = [], []
            for item in [*node.items, None]:
                if item is not None and not has_rule(item):
                    run.append(item)
                    continue
                if run:
                    parts.append(self.terminal(Seq(tuple(run)) if len(run) > 1 else run[0]))
                    run = []
                if item is not None:
                    parts.append(self.expr(item))
            if any(p is None for p in parts):
                return None
            return " ".join(p for p in parts if p)
        if isinstance(node, Alt):
            options = [self.expr(o) for o in node.options]
            present = [o for o in options if o]
            if not present:
                return "" if "" in options else None
            group = "(" + " | ".join(present) + ")"
            return group + "?" if "" in options else group
        if isinstance(node, Repeat):
            inner = self.expr(node.item)
            if not inner:
                return "" if node.min == 0 or inner == "" else None
            if (node.min, node.max) in ((0, None), (1, None), (0, 1)):
                return f"({inner})" + {(0, None): "*", (1, None): "+", (0, 1): "?"}[(node.min, node.max)]
            if node.max is None:
                return f"({inner}) ~ {node.min} ({inner})*"
            return f"({inner}) ~ {node.min}..{node.max}" if node.min else f"(({inner}) ~ 1..{node.max})?"
        assert isinstance(node, Graph)
        return self.graph(node)

    def graph(self, g: Graph) -> str | None:
        """One rule per state that can still reach a final one: `state: label next | ...`, empty where final."""
        prefix = f"g{self.graphs}_"
        self.graphs += 1
        labelled = [(a, self.expr(node), b) for a, node, b in g.edges]
        labelled = [(a, label, b) for a, label, b in labelled if label is not None]
        productive, grown = set(g.finals), True
        while grown:
            before = len(productive)
            productive |= {a for a, _, b in labelled if b in productive}
            grown = len(productive) > before
        if g.start not in productive:
            return None
        options: dict[int, list[str]] = {s: [] for s in productive}
        for a, label, b in labelled:
            if a in productive and b in productive:
                options[a].append(f"{label} {prefix}{b}".strip())
        for f in g.finals:
            options[f].append("")
        for s, alternatives in sorted(options.items()):
            self.lines.append(f"{prefix}{s}: " + " | ".join(alternatives))
        return f"{prefix}{g.start}"

    def grammar(self, root) -> SchemaGrammar:
        start = self.expr(root)
        for name, node in self.rules.items():
            if name not in self.empty:
                body = self.expr(node)
                if body is None:
                    raise GrammarError("the recursive schema's rule for its own values accepts nothing")
                self.lines.append(f"{name}: {body}")
        if start is None:
            raise GrammarError("the JSON schema accepts nothing: no JSON value is valid under it")
        lines = [f"start: {start}", *self.lines, *(f'{name}: "\\x00{name}"' for name in self.terminals)]
        return SchemaGrammar("\n".join(lines) + "\n", self.terminals)
