"""Context-free grammars written in Lark's EBNF, as token-level matchers (the `Matcher` protocol of matcher.py).

    >>> m = CFGMatcher.build('start: "(" start ")" | "x"', [b"(", b")", b"x", b"((", None], eos_id=4)
    >>> m.allowed(m.start).tolist()                       # "(", "x", "(("; not ")", not EOS
    [0, 2, 3]
    >>> s = int(m.next_state([m.start], [3])[0])          # after "(("
    >>> s = int(m.next_state([s], [2])[0])                # after "((x"
    >>> m.allowed(s).tolist(), m.is_accepting(s)
    ([1], False)

Lark reads the grammar and builds its LALR(1) parse table; every terminal's pattern is compiled by our own
`compile_regex` to a byte DFA. A matcher state interns a *set of configurations*, each (LALR state stack,
the lexeme being read: the candidate terminals still alive with their DFA states, the bytes that may not
start the next lexeme). Reading a byte advances every lexeme; a terminal that reaches an accepting DFA
state also branches into "complete it here" (fed to the parser; `%ignore` terminals leave the stack alone).

Lexing policy, as Lark's contextual lexer: the candidates of a lexeme are the terminals the parser accepts
at its start plus the `%ignore` terminals, and a lexeme is **longest-match**: it may end before byte b only
when no candidate could take b. Equal-length ties (a keyword that a NAME pattern also matches) keep both
readings, so the matcher allows a string when some such tokenization parses.

The states form a deterministic byte automaton discovered lazily: `delta[state, byte]` (int32, -2 not yet
known, -1 dead) fills in as the vocabulary walks need it, and each state's mask is computed once (a numba
walk over the byte-sorted vocabulary, shared prefixes walked once) and cached.
"""
from __future__ import annotations

import os
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import lark
import numba
import numpy as np
import torch
from lark.exceptions import LarkError, UnexpectedInput
from lark.lexer import PatternStr
from lark.parsers.lalr_analysis import Shift

from decspec.dsl.diagnostics import excerpt
from decspec.dsl.files import UnreadableFile, read_text
from decspec.stdlib.grammars.errors import GrammarError
from decspec.stdlib.grammars.index import VocabularyArrays
from decspec.stdlib.grammars.regex import compile_regex

JSON_GRAMMAR = Path(__file__).with_name("json.lark").read_text()
UNKNOWN, DEAD = -2, -1


@numba.njit(cache=True)
def vocab_walk(delta, data, starts, ends, lcp, ids, state):  # pragma: no cover
    """Walk the byte-sorted vocabulary from `state` through the known part of `delta` (int32 [S, 256]).

    Returns the ids of the tokens whose walk survives, and the (state, byte) moves still UNKNOWN that cut a
    walk short (to be filled in and walked again). `path[d]` is the state after the current token's first
    d bytes, so a prefix shared with the previous token is not walked again, and a dead one not at all.
    """
    n = ids.shape[0]
    longest = 0
    for k in range(n):
        longest = max(longest, ends[k] - starts[k])
    path = np.empty(longest + 1, np.int64)
    allowed = np.empty(n, np.int64)
    todo_s = np.empty(n, np.int64)
    todo_b = np.empty(n, np.int64)
    num_allowed = num_todo = 0
    path[0] = state
    reached = 0
    for k in range(n):
        depth = min(lcp[k], reached)
        s = path[depth]
        if s < 0:  # shares a dead or an unknown prefix
            continue
        length = ends[k] - starts[k]
        while depth < length:
            b = data[starts[k] + depth]
            t = delta[s, b]
            if t == -2:
                todo_s[num_todo] = s
                todo_b[num_todo] = b
                num_todo += 1
            depth += 1
            path[depth] = t
            s = t
            if t < 0:
                break
        reached = depth
        if s >= 0:
            allowed[num_allowed] = ids[k]
            num_allowed += 1
    return allowed[:num_allowed].copy(), todo_s[:num_todo].copy(), todo_b[:num_todo].copy()


def literal_regex(text: str, ignore_case: bool) -> str:
    """A regex (our dialect) matching exactly `text`, letters in both cases when `ignore_case`."""
    out = []
    for c in text:
        if ignore_case and c.lower() != c.upper():
            out.append(f"[{literal_regex(c.lower(), False)}{literal_regex(c.upper(), False)}]")
        elif c.isalnum() and c.isascii():
            out.append(c)
        else:
            out.append(f"\\U{ord(c):08X}")
    return "".join(out)


def terminal_dfa(term):
    """The byte DFA of one Lark terminal; GrammarError naming the terminal when our regexes cannot say it."""
    pattern = term.pattern
    flags = set(pattern.flags)
    shown = f"lark terminal {excerpt(term.name)} ({excerpt(getattr(pattern, 'raw', None) or repr(pattern.value))})"
    if isinstance(pattern, PatternStr):
        if flags - {"i"}:
            raise GrammarError(f"{shown}: the regex flags {sorted(flags - {'i'})} are not supported")
        regex = literal_regex(pattern.value, "i" in flags)
    else:
        if flags:
            raise GrammarError(f"{shown}: the regex flags {sorted(flags)} are not supported",
                               hint="spell the cases out, e.g. [aA] for 'a' with the 'i' flag")
        regex = pattern.value
    try:
        dfa = compile_regex(regex)
    except GrammarError as e:
        hint = e.diagnostics[0].hint
        if "lookaround" in e.message:
            hint = 'write the terminal without lookaround, e.g. a JSON-style string: /"(?:[^"\\\\]|\\\\.)*"/'
        raise GrammarError(f"{shown}: {e.message}", hint=hint) from None
    if dfa.accepting[dfa.start]:
        raise GrammarError(f"{shown} matches the empty string; a terminal must read at least one byte")
    return dfa


class LarkText(str):
    """A Lark grammar's text, and the folder its `%import`s resolve against (the .dec file's; None: no imports
    but Lark's own `common`)."""

    folder: str | None

    def __new__(cls, text: str, folder: str | os.PathLike | None = None) -> LarkText:
        self = super().__new__(cls, text)
        self.folder = None if folder is None else os.path.abspath(folder)
        return self


def load_lark(source: str, start: str) -> lark.Lark:
    """Lark's LALR(1) build of the grammar; its errors become GrammarErrors (Lark's message: line, column)."""
    if not isinstance(source, str):
        raise GrammarError(f"a lark grammar needs the grammar's text, got {type(source).__name__}")
    return lark_lalr(str(source), start, getattr(source, "folder", None))


def _importer(folder: str | None):
    """Lark's `import_paths` loader: `%import name.RULE` and `%import .name.RULE` read `name.lark` from the spec's
    folder (a relative import inside an imported grammar: from that grammar's folder), through dsl/files.py's
    reader; Lark's own grammars (`common`) come from Lark. Nothing is looked up in the working directory."""

    def load(base: Any, grammar_path: str) -> tuple[str, str]:
        # base: None for `%import name`, else the importing grammar's folder (absolute for every grammar of a spec)
        where = base if isinstance(base, str) and os.path.isabs(base) else folder
        named = excerpt(grammar_path.removesuffix(".lark").replace(os.sep, "."))
        path = None if where is None else os.path.join(where, grammar_path)
        if path is None or not os.path.lexists(path):
            if base is None and os.path.isfile(os.path.join(_LARK_GRAMMARS, grammar_path)):
                raise OSError(grammar_path)  # one of Lark's own grammars: Lark's next loader reads it
            if where is None:
                raise GrammarError(f"lark grammar: cannot %import '{named}': a grammar given as text has no folder to import from")
            raise GrammarError(f"lark grammar: cannot %import '{named}': no file {excerpt(grammar_path)} in {where}")
        try:
            return path, read_text(Path(path), "a Lark grammar")
        except UnreadableFile as e:
            raise GrammarError(f"lark grammar: cannot %import '{named}': {e}") from None

    return load


_LARK_GRAMMARS = os.path.join(os.path.dirname(lark.__file__), "grammars")
_NAME = "<lark grammar>"  # the grammar's name for Lark: not "<string>", which Lark resolves relative imports for from __main__


@lru_cache(maxsize=32)
def lark_lalr(source: str, start: str, folder: str | None = None) -> lark.Lark:
    """One Lark build per (grammar, start, import folder) in a process: the matcher only reads its rules and
    parse table."""
    name = os.path.join(folder, _NAME) if folder else _NAME
    try:
        return lark.Lark(source, parser="lalr", lexer="contextual", start=start, import_paths=[_importer(folder)], source_path=name)
    except UnexpectedInput as e:  # a syntax error Lark did not name: where it is, not what it read there
        raise GrammarError(f"lark grammar: unexpected input at line {e.line} column {e.column}") from None
    except LarkError as e:
        text = " ".join(str(e).split())
        if f"undefined rule: NonTerminal('{start}')" in text:
            raise GrammarError(f"the lark grammar has no start rule '{start}'",
                               hint=f"define it ({start}: ...) or name another rule as the start") from None
        hint = ("the grammar must be LALR(1) (one token of lookahead decides every step); Earley-only grammars are "
                "not supported") if "collision" in text.lower() else None
        # A grammar file may be anything a spec pointed at (`key: value` lines are Lark syntax), so Lark's
        # messages that name rules are shown only for text that defines the start rule, capped and escaped;
        # Lark follows a syntax error's message with the text around it, after a blank line: never shown.
        said = " ".join(str(e).split("\n\n")[0].split()).replace(f" in {name}", "").rstrip(" :")
        if " at line " not in said and not re.search(rf"(?m)^[ \t]*[?!]?{re.escape(start)}(?:\.-?\d+)?[ \t]*:", source):
            raise GrammarError(f"the lark grammar has no start rule '{start}'",
                               hint=f"define it ({start}: ...) or name another rule as the start") from None
        raise GrammarError(f"lark grammar: {excerpt(said, 160)}", hint=hint) from None


def check_productive(parser: lark.Lark, start: str) -> None:
    """Every rule must derive some finite string, or a decode could walk into it and never finish."""
    productive: set[str] = set()
    changed = True
    while changed:
        changed = False
        for rule in parser.rules:
            name = rule.origin.name
            if name not in productive and all(s.is_term or s.name in productive for s in rule.expansion):
                productive.add(name)
                changed = True
    if start not in productive:
        raise GrammarError(f"the lark grammar accepts nothing: rule '{start}' derives no finite string",
                           hint="give the recursion a way out, e.g. start: \"x\" start | \"x\"")
    stuck = sorted({r.origin.name for r in parser.rules} - productive)
    if stuck:
        raise GrammarError(f"lark rule '{stuck[0]}' derives no finite string", hint="give its recursion a way out")


class LALRStacks:
    """Interned LALR(1) state stacks of one Lark parse table, and the parser's moves on them (cached)."""

    def __init__(self, table, start_state: int, end_state: int, terminals: list[str]):
        self.states, self.end_state = table.states, end_state
        self.terminals = terminals
        self.ids: dict[tuple[int, ...], int] = {}
        self.stacks: list[tuple[int, ...]] = []
        self.fed: dict[tuple[int, int], int] = {}
        self.candidates: dict[int, tuple[int, ...]] = {}
        self.ends: dict[int, bool] = {}
        self.start = self.intern((start_state,))

    def intern(self, stack: tuple[int, ...]) -> int:
        if stack not in self.ids:
            self.ids[stack] = len(self.stacks)
            self.stacks.append(stack)
        return self.ids[stack]

    def run(self, stack_id: int, name: str):
        """The stack after the parser reads terminal `name` (reductions, then a shift): a stack tuple, True when
        `name` is "$END" and the input is accepted, or None on a syntax error."""
        stack = list(self.stacks[stack_id])
        while True:
            action = self.states[stack[-1]].get(name)
            if action is None:
                return None
            kind, arg = action
            if kind is Shift:
                stack.append(arg)
                return tuple(stack)
            if arg.expansion:
                del stack[-len(arg.expansion):]
            stack.append(self.states[stack[-1]][arg.origin.name][1])
            if name == "$END" and stack[-1] == self.end_state:
                return True

    def feed(self, stack_id: int, terminal: int) -> int:
        """The interned stack after reading `terminal`, or -1 when the parser rejects it."""
        key = (stack_id, terminal)
        if key not in self.fed:
            out = self.run(stack_id, self.terminals[terminal])
            self.fed[key] = -1 if out is None else self.intern(out)
        return self.fed[key]

    def acceptable(self, stack_id: int) -> tuple[int, ...]:
        """The terminals the parser really accepts next (each tried: LALR may reduce before finding an error)."""
        if stack_id not in self.candidates:
            row = self.states[self.stacks[stack_id][-1]]
            named = [t for t, name in enumerate(self.terminals) if name in row]
            self.candidates[stack_id] = tuple(t for t in named if self.feed(stack_id, t) >= 0)
        return self.candidates[stack_id]

    def can_end(self, stack_id: int) -> bool:
        if stack_id not in self.ends:
            self.ends[stack_id] = self.run(stack_id, "$END") is True
        return self.ends[stack_id]


class CFGMatcher:
    """A Lark grammar over one vocabulary, as a lazily discovered token-level matcher. Build with `build`.

    State 0 is the start. `num_states` counts every interned state, including those met inside a token's
    bytes; masks exist only for the states that a mask or allowed query asked about.

    Discovery grows shared tables (one matcher serves every decoder over the same grammar and vocabulary,
    from the in-memory cache), so the protocol's queries hold a lock: concurrent generations never see
    a half-interned state.
    """

    def __init__(self, parser: lark.Lark, vocab: list[bytes | None], eos_id: int | None, start: str,
                 terminals: dict | None = None):
        table = parser.parser.parser.parser.parse_table
        lexed = {t.name: t for t in parser.terminals}
        declared = sorted({name for row in table.states.values() for name in row
                           if name.isupper() and name != "$END" and name not in lexed})
        if declared:
            raise GrammarError(f"lark terminal {declared[0]} has no pattern (%declare): a custom lexer's terminal "
                               "is not supported", hint="define it with a string or a /regex/")
        names = sorted(lexed)
        self.parser = LALRStacks(table, table.start_states[start], table.end_states[start], names)
        terminals = terminals or {}  # name -> a ByteDFA given for it (a JSON Schema's compiled parts)
        dfas = [terminals[n] if n in terminals else terminal_dfa(lexed[n]) for n in names]
        self.terminal_names = names
        self.ignore = frozenset(i for i, n in enumerate(names) if n in set(parser.ignore_tokens))
        self.trans = [d.transitions.tolist() for d in dfas]  # per terminal: [Q][256] -> DFA state or -1
        self.final = [d.accepting.tolist() for d in dfas]
        # bitmask of the bytes that continue each DFA state: the bytes a lexeme ending there forbids next
        self.onward = [[sum(1 << b for b in np.flatnonzero(row >= 0).tolist()) for row in d.transitions] for d in dfas]
        self.vocab_size, self.eos_id, self.start = len(vocab), eos_id, 0
        arrays = VocabularyArrays.of(vocab, eos_id)  # made once per vocabulary (index.py), shared with token indexes
        self.walkable = arrays.sorted
        self.token_list = arrays.token_list
        self.configs: list[frozenset] = []
        self.ids: dict[frozenset, int] = {}
        self.accepting: list[bool] = []
        self.row_filled: list[bool] = []  # whether the state's unreadable bytes are marked DEAD in delta
        self.starts: dict[int, tuple] = {}  # stack -> (lexeme start, bytes it can begin with)
        self.delta = np.full((64, 256), UNKNOWN, dtype=np.int32)
        self.masks: dict[int, np.ndarray] = {}  # state -> bool [V], for the states asked about
        self.lock = threading.RLock()  # held by the protocol's queries (mask, next_state, is_allowed, allowed)
        self.intern(frozenset({(self.parser.start, (), 0)}))

    @classmethod
    def build(cls, source: str, vocab: list[bytes | None], eos_id: int | None, start: str = "start",
              terminals: dict | None = None) -> CFGMatcher:
        """The matcher of a Lark grammar (LALR(1); terminals in our regex dialect) over `vocab`, checked: the
        grammar accepts something, every rule can finish, and some token can begin a string of it.
        `terminals` maps terminal names to byte DFAs that replace their patterns (json_schema/recursive.py)."""
        if eos_id is not None and not 0 <= eos_id < len(vocab):
            raise GrammarError(f"eos id {eos_id} is outside the vocabulary of {len(vocab)} tokens")
        parser = load_lark(source, start)
        check_productive(parser, start)
        matcher = cls(parser, vocab, eos_id, start, terminals)
        if not matcher.mask_row(matcher.start).any():
            first = [b for b in range(256) if matcher.step(matcher.start, b) >= 0]
            shown = ", ".join(repr(bytes([b]))[1:] for b in first[:8]) + (", ..." if len(first) > 8 else "")
            raise GrammarError("the vocabulary cannot express this grammar: no token can begin a string of it",
                               hint=f"its strings begin with one of the bytes {shown}")
        return matcher

    # the byte automaton

    def intern(self, configs: frozenset) -> int:
        if not configs:
            return DEAD
        state = self.ids.get(configs)
        if state is None:
            state = self.ids[configs] = len(self.configs)
            self.configs.append(configs)
            self.accepting.append(any(not lex and self.parser.can_end(stack) for stack, lex, _ in configs))
            self.row_filled.append(False)
            if state >= self.delta.shape[0]:
                grown = np.full((2 * self.delta.shape[0], 256), UNKNOWN, dtype=np.int32)
                grown[:state] = self.delta[:state]
                self.delta = grown
        return state

    def step(self, state: int, byte: int) -> int:
        """The state after one more byte (computed once per (state, byte), then read from `delta`)."""
        known = int(self.delta[state, byte])
        if known != UNKNOWN:
            return known
        if not self.row_filled[state]:  # one pass marks every byte that no configuration can read as dead
            self.row_filled[state] = True
            bits = np.frombuffer(self.readable(state).to_bytes(32, "little"), dtype=np.uint8)
            self.delta[state, np.unpackbits(bits, bitorder="little") == 0] = DEAD
            if self.delta[state, byte] == DEAD:
                return DEAD
        out = set()
        for stack, lex, banned in self.configs[state]:
            if not lex:  # a new lexeme: longest match forbids the bytes that would have continued the last one
                if banned >> byte & 1:
                    continue
                lex = self.lexeme_start(stack)[0]
            moved = tuple((t, q) for t, q in ((t, self.trans[t][q][byte]) for t, q in lex) if q >= 0)
            if not moved:
                continue
            onward = self.bytes_onward(moved)
            if onward:
                out.add((stack, tuple((t, q) for t, q in moved if self.onward[t][q]), 0))
            for t, q in moved:
                if self.final[t][q]:  # the lexeme may end here as terminal t
                    after = stack if t in self.ignore else self.parser.feed(stack, t)
                    if after >= 0:
                        out.add((after, (), onward))
        target = self.intern(frozenset(out))
        self.delta[state, byte] = target
        return target

    def lexeme_start(self, stack: int) -> tuple[tuple[tuple[int, int], ...], int]:
        """The candidates of a lexeme starting on `stack`, at their DFA starts, and the bytes they can begin with."""
        found = self.starts.get(stack)
        if found is None:
            lex = tuple((t, 0) for t in sorted(set(self.parser.acceptable(stack)) | self.ignore))
            found = self.starts[stack] = (lex, self.bytes_onward(lex))
        return found

    def bytes_onward(self, lex) -> int:
        onward = 0
        for t, q in lex:
            onward |= self.onward[t][q]
        return onward

    def readable(self, state: int) -> int:
        """Bitmask of the bytes some configuration of `state` can read."""
        out = 0
        for stack, lex, banned in self.configs[state]:
            out |= self.bytes_onward(lex) if lex else self.lexeme_start(stack)[1] & ~banned
        return out

    def walk(self, state: int, data: bytes) -> int:
        for byte in data:
            if state < 0:
                break
            state = self.step(state, byte)
        return state

    def mask_row(self, state: int) -> np.ndarray:
        """bool [V]: the tokens allowed in `state` (cached): those whose bytes lead somewhere, and EOS when the
        parse can end here."""
        row = self.masks.get(state)
        if row is None:
            while True:
                allowed, todo_s, todo_b = vocab_walk(self.delta, *self.walkable, state)
                if not len(todo_s):
                    break
                for s, b in set(zip(todo_s.tolist(), todo_b.tolist())):
                    self.step(s, b)
            row = np.zeros(self.vocab_size, dtype=bool)
            row[allowed] = True
            if self.eos_id is not None and self.accepting[state]:
                row[self.eos_id] = True
            self.masks[state] = row
        return row

    # the matcher protocol

    @property
    def num_states(self) -> int:
        return len(self.configs)

    def mask(self, states, device: str | torch.device | None = None) -> torch.Tensor:
        """bool [B, V]: the tokens allowed in each of `states` (int [B], tensor or array)."""
        states = np.asarray(states.cpu() if isinstance(states, torch.Tensor) else states, dtype=np.int64).reshape(-1)
        if states.size and (states.min() < 0 or states.max() >= self.num_states):
            raise ValueError(f"grammar states must be in [0, {self.num_states}), got {states.tolist()}")
        with self.lock:
            rows = np.stack([self.mask_row(s) for s in states.tolist()]) if states.size else np.zeros((0, self.vocab_size), bool)
        out = torch.from_numpy(rows)  # [B, V]
        return out if device is None else out.to(device)

    def next_state(self, states, tokens):
        """The state after each token (int [B] each; a tensor in gives a tensor out); -1 where it is not allowed.
        EOS keeps the state (when the parse can end there)."""
        as_tensor = isinstance(states, torch.Tensor)
        s_list = np.asarray(states.cpu() if as_tensor else states, dtype=np.int64).reshape(-1).tolist()
        t_list = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens, dtype=np.int64).reshape(-1).tolist()
        out = np.full(len(s_list), -1, dtype=np.int64)
        with self.lock:
            for i, (s, t) in enumerate(zip(s_list, t_list)):
                if not (0 <= s < self.num_states and 0 <= t < self.vocab_size):
                    continue
                if t == self.eos_id:
                    out[i] = s if self.accepting[s] else -1
                elif self.token_list[t]:
                    out[i] = self.walk(s, self.token_list[t])
        return torch.from_numpy(out).to(states.device) if as_tensor else out

    def is_allowed(self, state: int, token: int) -> bool:
        with self.lock:
            return bool(0 <= state < self.num_states and 0 <= token < self.vocab_size and self.mask_row(state)[token])

    def allowed(self, state: int) -> np.ndarray:
        """The token ids allowed in `state`, ascending (EOS included when the parse can end)."""
        with self.lock:
            return np.flatnonzero(self.mask_row(state))

    def is_accepting(self, state: int) -> bool:
        return bool(self.accepting[state])

    def __repr__(self) -> str:
        return (f"CFGMatcher(terminals={len(self.terminal_names)}, states={self.num_states}, "
                f"masks={len(self.masks)}, vocab={self.vocab_size})")
