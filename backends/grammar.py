"""grammar_state / grammar_mask semantics over a matcher (stdlib/grammars/matcher.py), shared by every backend.

In the IR a grammar state is a pure function of a token sequence: "the state after the row's generated
tokens ++ ext[:, :n]", as a model call is "the logits after ctx ++ ext[:, :n]". A `GrammarSession` makes that
cheap the way `PrefixCache` does for models: it remembers the states along each row's last walked sequence,
finds the longest common prefix with the sequence asked for and walks only the rest. So drafts rejected in
a round are forgotten with nothing to undo, and a round costs one `next_state` per new token per row.

    session = GrammarSession(matcher, start=prompt_lengths)
    states = grammar_states(session, ctx.tokens, ctx.length, start, drafts, n=2)   # [B]: after ctx ++ d[:2]
    logits = masked_logits(session.matcher, logits, states)                         # refused tokens -> -inf
"""
from __future__ import annotations

import threading
from typing import Any

import torch

from decspec.backends.interpreter import BackendError


class GrammarSession:
    """One matcher over a batch of rows; `start` [B] is where each row's generated tokens begin (its prompt
    length), for backends whose context does not carry it."""

    def __init__(self, matcher, start: torch.Tensor | None = None):
        self.matcher = matcher
        self.start = start
        self.tokens: torch.Tensor | None = None  # [B, C] the sequences walked last
        self.states: torch.Tensor | None = None  # [B, C+1] states[:, j]: after tokens[:, :j]; -1 after a refused token
        self.length: torch.Tensor | None = None  # [B] how much of each row's sequence is valid
        self.steps = 0  # tokens walked (a cost statistic)
        self.forced: dict[tuple[int, bool], int] = {}  # (state, plain) -> the token forced there (-1: none): forced_token's memo

    def walk(self, seq: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """States along each row's sequence: seq [B, W], length [B] -> [B, W+1] (column j: after seq[:, :j];
        meaningful for j <= length)."""
        B, W = seq.shape
        if self.tokens is None or self.tokens.shape[0] != B:  # a new batch (or an exact round's new rows)
            self.tokens = seq.new_zeros(B, 0)
            self.states = torch.full((B, 1), self.matcher.start, dtype=torch.long)
            self.length = torch.zeros(B, dtype=torch.long)
        if self.tokens.shape[1] < W:  # grow the buffers (amortized: at least double)
            grow = max(W - self.tokens.shape[1], self.tokens.shape[1])
            self.tokens = torch.cat([self.tokens, self.tokens.new_zeros(B, grow)], 1)
            self.states = torch.cat([self.states, self.states.new_full((B, grow), -1)], 1)
        seq, length = seq.cpu(), length.cpu()
        held = torch.minimum(self.length, length)
        differs = (self.tokens[:, :W] != seq) & (torch.arange(W)[None, :] < held[:, None])
        first = differs.int().argmax(1) if W else held
        lcp = torch.where(differs.any(1), first, held)  # [B] positions whose states are known
        for j in range(int(lcp.min()) if B else 0, int(length.max()) if B else 0):
            rows = ((lcp <= j) & (j < length)).nonzero().flatten()
            if not rows.numel():
                continue
            s, t = self.states[rows, j], seq[rows, j]
            nxt = torch.full_like(s, -1)
            ok = s >= 0  # after a refused token there is no state
            if bool(ok.any()):
                nxt[ok] = torch.as_tensor(self.matcher.next_state(s[ok], t[ok]), dtype=torch.long)
            self.states[rows, j + 1] = nxt
            self.steps += rows.numel()
        self.tokens[:, :W] = seq
        self.length = length.clone()
        return self.states[:, : W + 1]


def grammar_states(session: GrammarSession, tokens: torch.Tensor, length: torch.Tensor, start: torch.Tensor,
                   ext: torch.Tensor | None = None, n: int | None = None, last: bool = True) -> torch.Tensor:
    """The grammar state after each row's generated tokens (tokens[b, start[b]:length[b]]) ++ ext[:, :n]:
    the last position [B] (last) or every position from the end of the context [B, n+1].
    tokens: [B, S], length/start: [B], ext: [B, N]."""
    device = tokens.device
    n = 0 if ext is None else (ext.shape[1] if n is None else int(n))
    gen = length.cpu() - start.cpu()  # [B] generated tokens per row
    W = int(gen.max()) + n
    cols = torch.arange(W)
    seq = tokens.cpu().gather(1, (start.cpu()[:, None] + cols[None, :]).clamp(max=tokens.shape[1] - 1))  # [B, W]
    if n:
        seq.scatter_(1, gen[:, None] + torch.arange(n), ext[:, :n].cpu())
    states = session.walk(seq, gen + n)  # [B, W+1]
    if bool((states.gather(1, gen[:, None]) < 0).any()):
        raise BackendError("a row's committed tokens break the grammar (a decoder bug: every committed token is sampled under the mask)")
    if last:
        return states.gather(1, (gen + n)[:, None]).squeeze(1).to(device)
    return states.gather(1, gen[:, None] + torch.arange(n + 1)).to(device)


def masked_logits(matcher, logits: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """logits [..., V] with what `states` [...] refuse set to -inf; rows whose state is -1 are left as they are
    (they follow a refused draft, so nothing sampled there is ever committed)."""
    flat = states.reshape(-1).cpu()
    allowed = matcher.mask(flat.clamp(min=0))  # [R, Vm]
    V, Vm = logits.shape[-1], allowed.shape[-1]
    if Vm < V:  # ids past the grammar's vocabulary (a padded LM head) are never allowed
        allowed = torch.cat([allowed, allowed.new_zeros(allowed.shape[0], V - Vm)], 1)
    allowed = (allowed | (flat < 0)[:, None]).view(*states.shape, V).to(logits.device)
    return logits.masked_fill(~allowed, float("-inf"))


FORCED_CHAIN = 64  # a state allowing more tokens than this forces none (their bytes are not compared)
PLAIN_EXCLUDES = (32, 9, 10, 13, 92)  # bytes that make a token not plain: whitespace and the backslash
LOOKUP_WINDOW = 1024  # forced_drafts looks up n-grams in each row's last this many tokens


def forced_token(session: GrammarSession, state: int, plain: bool) -> int:
    """The token the grammar forces in `state`, or -1: among the allowed tokens (EOS aside; with `plain`, only
    those without whitespace or a backslash when there are any), the only one, or the longest where every one
    is a prefix of it (`"`, `"n`, `"name`, `"name":` after `{` when the key must be `name`: jump-forward, as
    SGLang's compressed FSM; a tokenizer writes forced text in the fewest tokens). None in an accepting state
    (the row may end there), where more than FORCED_CHAIN tokens are allowed, or where they diverge. Memoized."""
    memo = session.forced.get((state, plain))
    if memo is not None:
        return memo
    m = session.matcher
    out = -1
    if state >= 0 and not m.is_accepting(state):
        allowed = m.allowed(state)
        if len(allowed) <= FORCED_CHAIN + 1:
            words = {int(t): m.token_list[int(t)] for t in allowed if int(t) != m.eos_id}
            if plain:
                words = {t: w for t, w in words.items() if not any(c in w for c in PLAIN_EXCLUDES)} or words
            if words:
                longest = max(words, key=lambda t: (len(words[t]), -t))
                if all(words[longest].startswith(w) for w in words.values()):
                    out = longest
    session.forced[(state, plain)] = out
    return out


def lookup_next(seq: list[int], ngram: int) -> int:
    """The token that followed the latest earlier occurrence of seq's last n tokens (n = ngram .. 1), or -1."""
    L = len(seq)
    for n in range(min(ngram, L - 1), 0, -1):
        tail = seq[L - n:]
        for j in range(L - n - 1, max(L - LOOKUP_WINDOW, 0) - 1, -1):
            if seq[j:j + n] == tail:
                return seq[j + n]
    return -1


def forced_drafts(session: GrammarSession, tokens: torch.Tensor, length: torch.Tensor, start: torch.Tensor,
                  k: int, ngram: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to k drafts after each row's context, each from the grammar's state after the ones before:
    1. the token the grammar forces (forced_token over every allowed token);
    2. else, with ngram >= 1, the token that followed the latest earlier occurrence of the row's last `ngram`
       (.. 1) tokens, if the grammar allows it: the row's own habits where the grammar leaves a choice (a space
       after `:`, the next key of a list of objects);
    3. else the forced token among the plain tokens (no whitespace, no backslash): the compact spelling;
    and the row stops at the first step none of these gives (in a state where the grammar may end, only 2
    applies). -> drafts [B, k] (0 past the count), count [B]."""
    states = grammar_states(session, tokens, length, start).tolist()  # [B]: after the committed tokens
    B = len(states)
    drafts = torch.zeros(B, k, dtype=torch.long)
    count = torch.zeros(B, dtype=torch.long)
    m = session.matcher
    rows, lengths = tokens.cpu(), length.cpu().tolist()
    for b, s in enumerate(states):
        seq = rows[b, max(lengths[b] - LOOKUP_WINDOW, 0): lengths[b]].tolist() if ngram else []
        for i in range(k):
            t = forced_token(session, s, plain=False)
            if t < 0 and ngram:
                t = lookup_next(seq, ngram)
                if t >= 0 and (t == m.eos_id or not m.is_allowed(s, t)):
                    t = -1
            if t < 0:
                t = forced_token(session, s, plain=True)
            if t < 0:
                break
            drafts[b, i] = t
            count[b] = i + 1
            seq.append(t)
            s = int(m.next_state([s], [t])[0])
    return drafts.to(tokens.device), count.to(tokens.device)


# ---------------------------------------------------------------------------------------------- on the device

TABLE_BYTES = 256 * 2**20  # a grammar whose tables would hold more stays on the host (its masks a graph break)


class GrammarTable:
    """A regular grammar's token index (stdlib/grammars/index.py TokenIndex) as tensors on the model's device, so a
    compiled round masks and advances grammar states with gathers, without leaving the graph (issue 18, item 2):

    - mask: the packed rows (`words` int32 [S+1, ceil(V/32)], XGrammar-style bitmasks), gathered by state and
      unpacked with `&` against each bit (`bits`; torch-mlir has no shift); row S is the dead state (-1: after a refused draft), which refuses nothing, as
      `masked_logits` leaves such rows;
    - next state: the token's bytes (`token_bytes` uint8 [V, L], `token_length` [V]) walked through the byte DFA
      (`transitions` [D+1, 256], its last row an absorbing dead state) from the state's DFA state, L gathers, then
      mapped back to a grammar state (`index_of`); EOS keeps the state, a refused token gives -1 — what
      `TokenIndex.next_state` computes on the host.

    The host still walks each row's committed tokens, once per round (`grammar_states`, one step per new token);
    the round's drafts are walked on the device. Matchers with no finite table (the Lark CFG matcher: its states
    are parser stacks interned as they come) have none: their ops stay on the host.
    """

    def __init__(self, index, device: torch.device):
        import numpy as np

        if index.pending is not None:  # a lazy index: every row walked now, once
            index._ready(np.arange(index.num_states))
        S, D = index.num_states, index.transitions.shape[0]
        words = np.concatenate([index.words, np.full((1, index.words.shape[1]), 0xFFFFFFFF, dtype=index.words.dtype)])
        self.words = torch.from_numpy(words.view(np.int32).copy()).to(device)  # [S+1, W]
        self.dfa_of = torch.from_numpy(np.append(index.dfa_of.astype(np.int64), D)).to(device)  # [S+1]
        transitions = np.concatenate([index.transitions.astype(np.int64), np.full((1, 256), D, dtype=np.int64)])
        transitions[transitions < 0] = D
        self.transitions = torch.from_numpy(transitions).to(device)  # [D+1, 256]
        self.index_of = torch.from_numpy(np.append(index.index_of, -1)).to(device)  # [D+1]
        tokens = [t or b"" for t in index.token_list]
        L = max(1, max(map(len, tokens), default=1))
        data = np.zeros((len(tokens), L), dtype=np.uint8)
        for i, t in enumerate(tokens):
            data[i, : len(t)] = np.frombuffer(t, dtype=np.uint8)
        self.token_bytes = torch.from_numpy(data).to(device)  # [V, L] uint8 (a byte is widened where it indexes)
        self.token_length = torch.tensor([len(t) for t in tokens], dtype=torch.long, device=device)  # [V]
        # bit b of an int32 word (bit 31 is the sign): masks are tested with `&`, not shifts (torch-mlir has no shift)
        self.bits = torch.tensor([1 << b for b in range(31)] + [-(1 << 31)], dtype=torch.int32, device=device)
        self.dead, self.vocab_size, self.eos_id = S, index.vocab_size, -1 if index.eos_id is None else index.eos_id
        self.width = L
        self.index = index  # forced_tokens reads its token strings (on first use)
        self.forced: torch.Tensor | None = None  # forced_tokens' table, once made

    @staticmethod
    def size(index) -> int:
        """Bytes the tables of `index` would hold."""
        L = max((len(t or b"") for t in index.token_list), default=1)
        return (index.num_states + 1) * index.words.shape[1] * 4 + (index.transitions.shape[0] + 1) * 256 * 8 \
            + index.vocab_size * (L + 8)

    def allowed(self, states: torch.Tensor) -> torch.Tensor:
        """bool [..., V]: what `states` [...] allow (a dead state -1: everything)."""
        rows = self.words[torch.where(states < 0, self.dead, states)]  # [..., W]
        bits = (rows[..., None] & self.bits) != 0  # [..., W, 32]: token 32w + b is bit b of word w
        return bits.flatten(-2)[..., : self.vocab_size]

    def next_state(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The state after each token ([...] each): -1 where the token is refused (or the state is dead)."""
        live = torch.where(states < 0, self.dead, states)
        tokens = tokens.clamp(0, self.vocab_size - 1)
        word = self.words[live, torch.div(tokens, 32, rounding_mode="floor")]
        ok = ((word & self.bits[tokens % 32]) != 0) & (states >= 0)
        d = self.dfa_of[live]
        data, length = self.token_bytes[tokens], self.token_length[tokens]  # [..., L], [...]
        for j in range(self.width):
            d = torch.where(j < length, self.transitions[d, data[..., j].long()], d)
        out = torch.where(tokens == self.eos_id, states, self.index_of[d])
        return torch.where(ok, out, torch.full_like(out, -1))

    def allows(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """bool [...]: whether each state allows its token (False for a dead state, or an id past the vocabulary)."""
        live = torch.where(states < 0, self.dead, states)
        ids = tokens.clamp(0, self.vocab_size - 1)
        word = self.words[live, torch.div(ids, 32, rounding_mode="floor")]
        return ((word & self.bits[ids % 32]) != 0) & (states >= 0) & (tokens >= 0) & (tokens < self.vocab_size)

    def forced_tokens(self) -> torch.Tensor:
        """int64 [2, S+1]: the token each state forces (`forced_token`), row 0 among all its allowed tokens, row 1
        among the plain ones; -1 where none is (and in the dead state). Made on the host on first use (a round with
        forced drafts), from the host walk's own definition, so the device walk drafts what the host walk does."""
        if self.forced is None:
            import numpy as np

            index = self.index
            popcount = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)
            counts = popcount[index.words.view(np.uint8)].sum(1, dtype=np.int64)  # [S] allowed tokens per state
            session = GrammarSession(index)
            table = np.full((2, index.num_states + 1), -1, dtype=np.int64)
            for s in np.flatnonzero((counts <= FORCED_CHAIN + 1) & ~index.accepting).tolist():  # the others force none
                table[:, s] = forced_token(session, s, plain=False), forced_token(session, s, plain=True)
            self.forced = torch.from_numpy(table).to(self.words.device)
        return self.forced

    def states(self, start: torch.Tensor, ext: torch.Tensor | None, n: Any, last: bool) -> torch.Tensor:
        """grammar_states' result from the state after the committed tokens (`start` [B]): after ext[:, :n] ([B],
        last) or at every position 0..n ([B, n+1]); n an int, or a 0-d tensor (the host draft loop's step)."""
        if ext is None or ext.shape[1] == 0:
            return start if last else start[:, None]
        walked = [start]
        for j in range(ext.shape[1] if isinstance(n, torch.Tensor) else int(n)):  # a tensor n: every column, then the one
            walked.append(self.next_state(walked[-1], ext[:, j]))
        states = torch.stack(walked, 1)  # [B, N+1]
        if not last:
            return states[:, : int(n) + 1]
        if isinstance(n, torch.Tensor):
            return states.gather(1, n.reshape(1, 1).expand(states.shape[0], 1).long()).squeeze(1)
        return states[:, -1]

    def masked(self, logits: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """logits [..., V] with what `states` refuse set to -inf (masked_logits on the device)."""
        allowed = self.allowed(states)
        V = logits.shape[-1]
        if allowed.shape[-1] < V:  # ids past the grammar's vocabulary are never allowed (a dead state's row aside)
            pad = (states < 0)[..., None].expand(*states.shape, V - allowed.shape[-1])
            allowed = torch.cat([allowed, pad], -1)
        return logits.masked_fill(~allowed[..., :V], float("-inf"))


def lookup_next_rows(seq: torch.Tensor, length: torch.Tensor, ngram: int) -> torch.Tensor:
    """lookup_next for every row at once, with static shapes: row b's sequence is seq[b, :length[b]] (seq [B, N],
    length [B]), its window the last LOOKUP_WINDOW tokens. -> [B] the token, or -1.

    At each position p of the window, `run` is how many tokens before p (up to ngram) equal the row's last ones;
    the longest match wins (n-grams from `ngram` down to 1), and among its equals the latest."""
    B, N = seq.shape
    p = torch.arange(N, device=seq.device)[None, :]  # [1, N] where a match's next token sits
    same = torch.ones(B, N, dtype=torch.bool, device=seq.device)
    run = torch.zeros(B, N, dtype=torch.long, device=seq.device)
    for t in range(1, ngram + 1):  # same: seq[p-t .. p-1] == the row's last t tokens
        before = torch.cat([seq.new_full((B, t), -1), seq[:, : N - t]], 1)  # [B, N]: seq[p - t] (-1 before the start)
        same = same & (before == seq.gather(1, (length - t).clamp(min=0)[:, None]))
        run = run + same.long()
    lo = (length - LOOKUP_WINDOW).clamp(min=0)[:, None]  # [B, 1] the window's first position
    n = torch.minimum(run, p - lo).masked_fill(p >= length[:, None], 0).clamp(min=0)  # [B, N]: a match starts in the window
    best = n.amax(1)  # [B] the longest
    at = torch.where(n >= best[:, None], p, -1).amax(1)  # [B] its latest occurrence
    return torch.where(best > 0, seq.gather(1, at.clamp(min=0)[:, None]).squeeze(1), -1)


def forced_drafts_on_device(table: GrammarTable, forced: torch.Tensor, start: torch.Tensor, tokens: torch.Tensor,
                            length: torch.Tensor, k: int, ngram: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """forced_drafts with static shapes, for a grammar with a device table: k steps of table lookups (`forced`:
    GrammarTable.forced_tokens) and, with ngram >= 1, the row's own habits (lookup_next_rows), each step masked
    by whether the row still drafts. start [B]: the state after the committed tokens; tokens [B, S], length [B].
    -> drafts [B, k] (0 past the count), count [B], the state after each row's drafts [B]."""
    B = tokens.shape[0]
    seq = torch.cat([tokens, tokens.new_zeros(B, k)], 1)  # [B, S+k]: each row's context, then its drafts as they come
    drafts = tokens.new_zeros(B, k)
    count = torch.zeros(B, dtype=torch.long, device=tokens.device)
    drafting = start >= 0
    state = start
    for i in range(k):
        live = torch.where(state < 0, table.dead, state)
        t = forced[0, live]  # 1. the token the grammar forces
        if ngram:  # 2. the row's habit, where the grammar allows it
            seen = lookup_next_rows(seq, length + i, ngram)
            seen = torch.where((seen != table.eos_id) & table.allows(state, seen), seen, -1)
            t = torch.where(t < 0, seen, t)
        t = torch.where(t < 0, forced[1, live], t)  # 3. the compact spelling
        drafting = drafting & (t >= 0)
        t = torch.where(drafting, t, 0)
        drafts[:, i] = t
        count = count + drafting.long()
        seq.scatter_(1, (length + i)[:, None], t[:, None])
        state = torch.where(drafting, table.next_state(state, t), state)
    return drafts, count, state


def device_table(matcher, device: torch.device) -> GrammarTable | None:
    """The matcher's GrammarTable on `device` (made once per matcher and device), or None when it has no finite
    table (a CFG matcher) or its tables would exceed TABLE_BYTES."""
    from decspec.stdlib.grammars.index import TokenIndex

    if not isinstance(matcher, TokenIndex) or GrammarTable.size(matcher) > TABLE_BYTES:
        return None
    with _TABLES_LOCK:
        tables = matcher.__dict__.setdefault("_device_tables", {})
        key = str(device)
        if key not in tables:
            tables[key] = GrammarTable(matcher, device)
        return tables[key]


_TABLES_LOCK = threading.Lock()
