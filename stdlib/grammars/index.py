"""The token-level index of a grammar over one vocabulary: for every DFA state, which token ids may come
next and the state each leads to.

    index = TokenIndex.build(compile_regex(r"[0-9]{1,3}"), [b"1", b"23", b"456", b"x"], eos_id=None)
    index.allowed(index.start)            # array([0, 1, 2])
    s = index.next_state([0], [1])        # after "23"
    index.mask(s)                         # tensor([[True, False, False, False]]): one more digit at most
    index.is_accepting(int(s[0]))         # True

A token is allowed in a state when walking its bytes through the DFA never falls off and ends in a state
from which the vocabulary can still reach an accepting state; EOS is allowed exactly in accepting states
(its next state is the same state); special tokens (None in the vocabulary) never are. States that no
token sequence can finish are pruned with the moves into them, so a masked decode never gets stuck.

Layout: masks as packed bits, `uint32 [S, ceil(V/32)]` (bit t%32 of word t//32). Next states are not
stored per (state, token): `next_state` walks the chosen token's bytes through the byte DFA (int32 [D, 256])
kept beside the masks, a few array lookups per row. So memory is S*V/8 + D*1 KiB (+ the token bytes)
instead of 4 bytes per allowed (state, token) pair, which a JSON string state has for nearly every token.
The build walks the vocabulary sorted by bytes, so a prefix shared by several tokens is walked once.
"""
from __future__ import annotations

import os
import threading

import numba
import numpy as np
import torch

from decspec.stdlib.grammars.automaton import ByteDFA, reachable
from decspec.stdlib.grammars.errors import GrammarError

MAX_MASK_BYTES = 1 << 30  # the packed masks of every DFA state, before pruning: S * ceil(V/32) * 4 bytes


@numba.njit(cache=True)
def token_walk(transitions, data, starts, ends, lcp, ids, vocab_size, eos_id, accepting, states, keep):  # pragma: no cover
    """Walk every token from each of `states`: the packed mask of the tokens that end in a `keep` state, and
    the distinct state-to-state moves (src, dst) over all tokens.

    transitions: int32 [S, 256]; data: uint8, the walkable tokens' bytes concatenated in sorted order;
    starts/ends: int64 [n] their slices; lcp: int64 [n] the prefix each shares with the previous token;
    ids: int64 [n] their token ids. `path[d]` is the state after the current token's first d bytes, so a
    prefix shared with the previous token is not walked again, and a dead one is not walked at all.
    """
    num_states = transitions.shape[0]
    n = ids.shape[0]
    longest = 0
    for k in range(n):
        longest = max(longest, ends[k] - starts[k])
    path = np.empty(longest + 1, np.int32)
    words = np.zeros((states.shape[0], (vocab_size + 31) // 32), np.uint32)
    seen_from = np.full(num_states, -1, np.int64)  # seen_from[t] == s: the move s -> t is recorded
    capacity = 1024
    src = np.empty(capacity, np.int32)
    dst = np.empty(capacity, np.int32)
    num_moves = 0
    for row in range(states.shape[0]):
        s = states[row]
        path[0] = s
        reached = 0  # path[0..reached] holds the previous token's walk; path[reached] may be -1 (fell off)
        for k in range(n):
            depth = min(lcp[k], reached)
            state = path[depth]
            if state < 0:  # shares the previous token's dead prefix
                continue
            length = ends[k] - starts[k]
            while depth < length:
                state = transitions[state, data[starts[k] + depth]]
                depth += 1
                path[depth] = state
                if state < 0:
                    break
            reached = depth
            if state < 0:
                continue
            if keep[state]:
                words[row, ids[k] >> 5] |= np.uint32(1) << np.uint32(ids[k] & 31)
            if seen_from[state] != s:
                seen_from[state] = s
                if num_moves == capacity:
                    capacity *= 2
                    src = np.concatenate((src, np.empty(capacity - num_moves, np.int32)))
                    dst = np.concatenate((dst, np.empty(capacity - num_moves, np.int32)))
                src[num_moves] = s
                dst[num_moves] = state
                num_moves += 1
        if eos_id >= 0 and accepting[s]:
            words[row, eos_id >> 5] |= np.uint32(1) << np.uint32(eos_id & 31)
    return words, src[:num_moves].copy(), dst[:num_moves].copy()


def sorted_vocabulary(vocab: list[bytes | None], eos_id: int | None):
    """The walkable tokens (not special, not EOS, not empty) sorted by bytes, as flat arrays for `token_moves`."""
    ids = sorted((i for i, t in enumerate(vocab) if t and i != eos_id), key=lambda i: vocab[i])
    lengths = np.array([len(vocab[i]) for i in ids], dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    data = np.frombuffer(b"".join(vocab[i] for i in ids), dtype=np.uint8)
    lcp = np.zeros(len(ids), dtype=np.int64)
    for k in range(1, len(ids)):
        a, b = vocab[ids[k - 1]], vocab[ids[k]]
        m = min(len(a), len(b))
        j = 0
        while j < m and a[j] == b[j]:
            j += 1
        lcp[k] = j
    return data, starts, ends, lcp, np.array(ids, dtype=np.int64)


class VocabularyArrays:
    """What an index needs from a vocabulary, made once per vocabulary and EOS id (the last few are kept, compared
    token for token): the token bytes concatenated with their offsets (special tokens and the EOS empty), one
    `bytes` per token, and the walkable tokens sorted for `token_walk` (made on first use). Like XGrammar's
    TokenizerInfo, this is per-tokenizer work, not per-grammar work: at 32k tokens about 60 ms."""

    _memo: list = []  # [(vocab copy, eos_id, arrays)], most recent last
    _lock = threading.Lock()
    KEEP = 4

    def __init__(self, vocab: list[bytes | None], eos_id: int | None):
        clean = [b"" if t is None or i == eos_id else bytes(t) for i, t in enumerate(vocab)]
        self.offsets = np.concatenate([[0], np.cumsum([len(t) for t in clean])]).astype(np.int64)
        self.data = np.frombuffer(b"".join(clean), dtype=np.uint8).copy()
        self.token_list = clean
        self.singles = {t[0] for t in clean if len(t) == 1}
        self.eos_id = eos_id
        self._sorted = None

    @property
    def sorted(self):
        with self._lock:
            if self._sorted is None:
                self._sorted = sorted_vocabulary(self.token_list, self.eos_id)
            return self._sorted

    @classmethod
    def of(cls, vocab: list[bytes | None], eos_id: int | None) -> "VocabularyArrays":
        vocab = list(vocab)
        with cls._lock:
            for i, (v, e, arrays) in enumerate(cls._memo):
                if e == eos_id and len(v) == len(vocab) and v == vocab:
                    cls._memo.append(cls._memo.pop(i))
                    return arrays
        arrays = cls(vocab, eos_id)
        with cls._lock:
            cls._memo.append((vocab, eos_id, arrays))
            del cls._memo[:-cls.KEEP]
        return arrays


class TokenIndex:
    """Allowed tokens and next states per grammar state; state 0 is the start. Build with `TokenIndex.build`."""

    def __init__(self, words: np.ndarray, accepting: np.ndarray, dfa_of: np.ndarray, transitions: np.ndarray,
                 token_data: np.ndarray, token_offsets: np.ndarray, eos_id: int | None, pending: np.ndarray | None = None,
                 vocabulary: VocabularyArrays | None = None):
        self.words = words  # uint32 [S, ceil(V/32)]: bit t%32 of word t//32 is set when token t is allowed
        self.accepting = accepting  # bool [S]
        self.dfa_of = dfa_of  # int32 [S]: the byte DFA state behind each grammar state
        self.transitions = transitions  # int32 [D, 256]: the byte DFA, pruned states included (tokens pass them)
        self.token_data, self.token_offsets = token_data, token_offsets  # token t is data[offsets[t]:offsets[t+1]]
        self.eos_id, self.start = eos_id, 0
        self.vocab_size = len(token_offsets) - 1
        self.index_of = np.full(transitions.shape[0], -1, dtype=np.int64)
        self.index_of[dfa_of] = np.arange(len(dfa_of))
        self.token_list = vocabulary.token_list if vocabulary is not None else [
            bytes(token_data[a:b]) for a, b in zip(token_offsets[:-1], token_offsets[1:])]
        # rows not walked yet (a lazy index: `build` with every byte a token); filled on first use, under the lock
        self.pending = pending if pending is not None and pending.any() else None
        self._walk_lock = threading.Lock()
        self._vocabulary = vocabulary  # its sorted vocabulary fills rows (made here when loaded without one)

    def _fill(self, states) -> None:
        """Walk the vocabulary from the pending ones of `states` (grammar states): their rows of `words`."""
        with self._walk_lock:
            if self.pending is None:  # another thread walked the last ones
                return
            todo = np.unique(np.asarray(states, dtype=np.int64))
            todo = todo[self.pending[todo]] if todo.size else todo
            if not todo.size:
                return
            if self._vocabulary is None:
                self._vocabulary = VocabularyArrays.of(self.token_list, self.eos_id)
            eos = -1 if self.eos_id is None else self.eos_id
            accepting = np.zeros(self.transitions.shape[0], dtype=bool)
            accepting[self.dfa_of] = self.accepting
            keep = np.ones(self.transitions.shape[0], dtype=bool)
            rows, _, _ = token_walk(self.transitions, *self._vocabulary.sorted, self.vocab_size, eos, accepting, self.dfa_of[todo], keep)
            self.words[todo] = rows
            self.pending[todo] = False
            if not self.pending.any():
                self.pending = None

    def complete(self) -> TokenIndex:
        """Walk every pending row now (a lazy index becomes a full one) -> self."""
        if self.pending is not None:
            self._fill(np.flatnonzero(self.pending))
        return self

    def _ready(self, states) -> None:
        if self.pending is not None:
            self._fill(states)

    @classmethod
    def build(cls, dfa: ByteDFA, vocab: list[bytes | None], eos_id: int | None, lazy: bool | None = None) -> TokenIndex:
        """Walk every token from every DFA state, then keep the states that tokens reach from the start and
        from which tokens can reach an accepting state (both found once: one graph search each way).

        lazy (default: when it is exact): walk a state's tokens only when it is first asked about (`_fill`), as
        llguidance computes masks while decoding. Exact when every byte the DFA reads is a token by itself
        (byte-level BPE vocabularies): the DFA is trimmed, so every state is then reachable and can finish
        by single-byte tokens, nothing is pruned, and each state's row is what the full walk gives it. The
        time to a first mask is then the DFA's construction and one state's walk. DECSPEC_LAZY_INDEX=0 turns it off."""
        if eos_id is not None and not 0 <= eos_id < len(vocab):
            raise GrammarError(f"eos id {eos_id} is outside the vocabulary of {len(vocab)} tokens")
        n = dfa.num_states
        mask_bytes = n * ((len(vocab) + 31) // 32) * 4
        if mask_bytes > MAX_MASK_BYTES:
            raise GrammarError(f"the grammar is too large for this vocabulary: its token masks need {mask_bytes:,} bytes "
                               f"({n:,} states x {len(vocab):,} tokens, a bit each), over the limit of {MAX_MASK_BYTES:,}",
                               hint="lower the grammar's repeat bounds ({m,n}, minLength/maxLength, minItems/maxItems): "
                                    "its automaton has a state per repetition")
        arrays = VocabularyArrays.of(vocab, eos_id)
        data, offsets = arrays.data, arrays.offsets
        if lazy is None and os.environ.get("DECSPEC_LAZY_INDEX") == "0":  # every mask precomputed at build time
            lazy = False
        if lazy is None:
            used = np.flatnonzero((dfa.transitions >= 0).any(0))
            lazy = all(int(b) in arrays.singles for b in used)
        if lazy:
            words = np.zeros((n, (len(vocab) + 31) // 32), dtype=np.uint32)
            return cls(words, dfa.accepting.copy(), np.arange(n, dtype=np.int32), dfa.transitions, data, offsets, eos_id,
                       pending=np.ones(n, dtype=bool), vocabulary=arrays)
        sorted_vocab = arrays.sorted
        eos = -1 if eos_id is None else eos_id
        everything = np.ones(n, dtype=bool)
        walked, src, dst = token_walk(dfa.transitions, *sorted_vocab, len(vocab), eos, dfa.accepting, np.arange(n), everything)
        live = reachable(dst, src, n, np.flatnonzero(dfa.accepting))  # backwards from the accepting states
        if not live[dfa.start]:
            raise cannot_express(dfa, vocab, eos_id)
        forward = live[src] & live[dst]
        kept = reachable(src[forward], dst[forward], n, np.array([dfa.start]))
        states = np.flatnonzero(kept)  # ascending, so the start (DFA state 0) stays grammar state 0
        # A row walked above is final unless one of its moves leads to a pruned state: walk only those again.
        leaks = np.zeros(n, dtype=bool)
        leaks[src[~kept[dst]]] = True
        words = walked[states]
        again = np.flatnonzero(leaks[states])
        if again.size:
            rewalked, _, _ = token_walk(dfa.transitions, *sorted_vocab, len(vocab), eos, dfa.accepting, states[again], kept)
            words[again] = rewalked
        return cls(words, dfa.accepting[states].copy(), states.astype(np.int32), dfa.transitions, data, offsets, eos_id,
                   vocabulary=arrays)

    @property
    def num_states(self) -> int:
        return int(self.accepting.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held by the index's arrays."""
        arrays = (self.words, self.accepting, self.dfa_of, self.transitions, self.token_data, self.token_offsets, self.index_of)
        return sum(a.nbytes for a in arrays)

    def mask(self, states, device: str | torch.device | None = None) -> torch.Tensor:
        """bool [B, V]: the tokens allowed in each of `states` (int [B], tensor or array)."""
        if (isinstance(states, (list, tuple)) and len(states) == 1 and isinstance(states[0], (int, np.integer))
                and 0 <= states[0] < len(self.accepting)):
            self._ready([int(states[0])])
            rows = self.words[int(states[0]):int(states[0]) + 1]  # batch 1 from a list: no index array to build
        else:
            states = np.asarray(states.cpu() if isinstance(states, torch.Tensor) else states, dtype=np.int64).reshape(-1)
            if states.size and (states.min() < 0 or states.max() >= self.num_states):
                raise ValueError(f"grammar states must be in [0, {self.num_states}), got {states.tolist()}")
            self._ready(states)
            rows = self.words[states]
        bits = np.unpackbits(rows.view(np.uint8), axis=-1, count=self.vocab_size, bitorder="little")
        out = torch.from_numpy(bits).view(torch.bool)  # [B, V]
        return out if device is None else out.to(device)

    def is_allowed(self, state: int, token: int) -> bool:
        if self.pending is not None and 0 <= state < self.num_states:
            self._ready([state])
        return bool(0 <= state < self.num_states and 0 <= token < self.vocab_size
                    and (int(self.words[state, token >> 5]) >> (token & 31)) & 1)

    def next_state(self, states, tokens):
        """The state after each token (int [B] each; a tensor in gives a tensor out); -1 where it is not allowed.
        EOS keeps the state."""
        as_tensor = isinstance(states, torch.Tensor)
        if isinstance(states, (list, tuple)) and isinstance(tokens, (list, tuple)):  # the common batch-1 call: no arrays
            s_list, t_list = [int(s) for s in states], [int(t) for t in tokens]
        else:
            s_list = np.asarray(states.cpu() if as_tensor else states, dtype=np.int64).reshape(-1).tolist()
            t_list = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens, dtype=np.int64).reshape(-1).tolist()
        out = np.full(len(s_list), -1, dtype=np.int64)
        for i, (s, t) in enumerate(zip(s_list, t_list)):
            if not self.is_allowed(s, t):
                continue
            if t == self.eos_id:
                out[i] = s
                continue
            d = int(self.dfa_of[s])
            for byte in self.token_list[t]:
                d = self.transitions[d, byte]
            out[i] = self.index_of[d]
        return torch.from_numpy(out).to(states.device) if as_tensor else out

    def allowed(self, state: int) -> np.ndarray:
        """The token ids allowed in `state`, ascending (EOS included when it is accepting)."""
        self._ready([state])
        bits = np.unpackbits(self.words[state].view(np.uint8), bitorder="little")[:self.vocab_size]
        return np.flatnonzero(bits)

    def is_accepting(self, state: int) -> bool:
        return bool(self.accepting[state])

    def to_arrays(self) -> dict[str, np.ndarray]:
        pending = np.zeros(self.num_states, dtype=bool) if self.pending is None else self.pending.copy()
        return {"pending": pending, "words": self.words, "accepting": self.accepting, "dfa_of": self.dfa_of, "transitions": self.transitions,
                "token_data": self.token_data, "token_offsets": self.token_offsets,
                "eos_id": np.array(-1 if self.eos_id is None else self.eos_id, dtype=np.int64)}

    @classmethod
    def from_arrays(cls, arrays) -> TokenIndex:
        """The inverse of `to_arrays`; ValueError when the arrays do not fit together."""
        a = {k: np.asarray(arrays[k]) for k in ("words", "accepting", "dfa_of", "transitions", "token_data",
                                                  "token_offsets", "eos_id")}
        n, d, v = len(a["accepting"]), len(a["transitions"]), len(a["token_offsets"]) - 1
        fits = (a["words"].shape == (n, (v + 31) // 32) and a["dfa_of"].shape == (n,) and a["transitions"].shape[1:] == (256,)
                and (n == 0 or (0 <= a["dfa_of"].min() and a["dfa_of"].max() < d)) and a["token_offsets"][-1] == len(a["token_data"])
                and a["transitions"].max(initial=-1) < d)
        if not fits:
            raise ValueError("token index arrays do not fit together")
        pending = np.asarray(arrays["pending"]).astype(bool) if "pending" in arrays else None  # rows a lazy index had not walked
        if pending is not None and pending.shape != (n,):
            raise ValueError("token index arrays do not fit together")
        eos = int(a["eos_id"])
        return cls(a["words"].astype(np.uint32), a["accepting"].astype(bool), a["dfa_of"].astype(np.int32),
                   a["transitions"].astype(np.int32), a["token_data"].astype(np.uint8), a["token_offsets"].astype(np.int64),
                   None if eos < 0 else eos, pending=pending)

    def __repr__(self) -> str:
        return f"TokenIndex(states={self.num_states}, vocab={self.vocab_size})"


def cannot_express(dfa: ByteDFA, vocab: list[bytes | None], eos_id: int | None) -> GrammarError:
    """The error for a grammar no token sequence can complete, naming a byte no token contains if there is one."""
    present = set()
    for i, t in enumerate(vocab):
        if t and i != eos_id:
            present.update(t)
    example = dfa.shortest_example()
    missing = next((b for b in example if b not in present), None)
    if missing is not None:
        shown = repr(chr(missing)) if missing < 0x80 else "a non-ASCII character's byte"
        return GrammarError(f"the vocabulary cannot express this grammar: no token contains the byte 0x{missing:02X} "
                            f"({shown})", hint=f"a shortest string it accepts is {example!r}")
    return GrammarError("the vocabulary cannot express this grammar: no token sequence spells a string it accepts",
                        hint=f"a shortest string it accepts is {example!r}")
