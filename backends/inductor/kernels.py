"""The ops as plain tensor functions, for generated round code (codegen.py).

Each one is the eager backend's rule (the reference semantics) called without its interpreter
state, so the compiled and the eager backend compute the same thing by construction. Only the
draft loop differs: unrolled, with a per-row `alive` mask instead of an early exit, so that no
shape and no control flow depends on the data.
"""
from __future__ import annotations

import functools

import torch

from decspec.backends import grammar as G
from decspec.backends.eager import acceptance as A
from decspec.backends.eager import rules as E
from decspec.backends.eager import staged as S
from decspec.backends.inductor.codegen import TREE_KERNELS
from decspec.backends.speculation_length import where_rows
from decspec.stdlib import lookahead, recycling
from decspec.stdlib.combine import combine_logits
from decspec.stdlib.samplers import apply_pipeline, per_row


def logits_transform(logits: torch.Tensor, stages: tuple, ctx_tokens=None, ctx_length=None, ext=None, n=None,
                     settings=None) -> torch.Tensor:
    """The sampler stages; penalty stages count the tokens of ctx ++ ext[:, :n] (static shapes: n masks, an int or a 0-d tensor).
    settings: {PerRow key: [B] tensor}, the call's per-row sampler values (inputs of the compiled round, not constants)."""
    counts = None if ctx_tokens is None else E.context_counts(logits, ctx_tokens, ctx_length, ext, n)
    return apply_pipeline(logits, per_row(stages, settings, logits), counts)


def sampler_probs(logits: torch.Tensor, stages: tuple, *context, settings=None) -> torch.Tensor:
    return softmax(logits_transform(logits, stages, *context, settings=settings))


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return E.softmax(None, None, logits)[0]


def logits_combine(*logits: torch.Tensor, kind: str, **params) -> torch.Tensor:
    return combine_logits(kind, list(logits), **params)


def sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return E.sample_tokens(probs, u)


def argmax(probs: torch.Tensor) -> torch.Tensor:
    return E.argmax(None, None, probs)[0]


def token_prob(probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return E.token_prob(None, None, probs, tokens)[0]


def entropy(probs: torch.Tensor) -> torch.Tensor:
    return E.entropy(None, None, probs)[0]


def compare(x: torch.Tensor, op: str, value: float) -> torch.Tensor:
    return E._CMP[op](x, value)


def logical(a: torch.Tensor, b: torch.Tensor, op: str) -> torch.Tensor:
    return (a & b) if op == "and" else (a | b)


def logical_not(a: torch.Tensor) -> torch.Tensor:
    return ~a


def ngram_lookup(ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, k: int, ngram: int, min_ngram: int, vocab: int,
                 earliest: bool = False):
    """Prompt lookup over the context buffer: static shapes (a fixed loop over n-gram sizes, masks
    instead of branches). -> drafts [B, K], q [B, K, V], count [B]"""
    drafts, count = E.lookup_drafts(ctx_tokens, ctx_length, k, ngram, min_ngram, earliest)
    return drafts, E.one_hot_drafts(drafts, count, vocab), count


def recycle_draft(ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, adj: torch.Tensor, k: int, vocab: int):
    """Token recycling's chain from each row's last token (stdlib/recycling.py): a fixed loop of k steps. -> d, q, count"""
    return recycling.drafts(ctx_tokens, ctx_length, adj, k, vocab)


def recycle_update(adj: torch.Tensor, ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, d: torch.Tensor, count: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor:
    """The matrix after the round: the target's top tokens at every scored position (stdlib/recycling.py). -> [B, V, C]"""
    return recycling.update(adj, ctx_tokens, ctx_length, d, count, logits)


def lookahead_guess(ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Lookahead's newest Jacobi iterate, the tokens its branch call feeds after the context (stdlib/lookahead.py). -> [B, W]"""
    return lookahead.guess(ctx_tokens, ctx_length, levels)


def lookahead_collect(ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, levels: torch.Tensor, pool: torch.Tensor,
                      logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The next Jacobi iterate and the pool with its diagonal n-grams: a fixed loop of W - N + 1 inserts. -> levels', pool'"""
    return lookahead.collect(ctx_tokens, ctx_length, levels, pool, logits)


def lookahead_draft(ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, pool: torch.Tensor, k: int, vocab: int):
    """The newest pooled n-gram after each row's last token, one-hot q (stdlib/lookahead.py). -> d, q, count"""
    return lookahead.drafts(ctx_tokens, ctx_length, pool, k, vocab)


def select_rows(arm: torch.Tensor, logits: list) -> torch.Tensor:
    """Row b's logits from logits[arm[b]] (model_select's masked arms: each view was called over the batch)."""
    out = logits[0]
    for a in range(1, len(logits)):
        out = where_rows(arm == a, logits[a], out)
    return out


def head_level(model, hidden: torch.Tensor, depth: int) -> torch.Tensor:
    """Medusa head `depth`'s logits, one level of a head tree (the eager rule). hidden: [B, C] -> [B, 1, V]"""
    return model.medusa(hidden)[:, depth, None]


def model_hidden(session, ctx_length: torch.Tensor) -> torch.Tensor:
    """h at position L-2 of each row, from the static session's kept hidden states (zeros for one-token rows). -> [B, C]"""
    return session.hidden_at(ctx_length)


def head_logits(model, kind: str, hidden, ctx_tokens, ctx_length, drafts, step) -> torch.Tensor:
    """Medusa/Hydra logits of draft position `step` (an int, or a 0-d tensor in the host loop). -> [B, V]"""
    from decspec.backends.eager.heads import last_tokens
    from decspec.stdlib.heads import head_logits as draft_head_logits

    return draft_head_logits(model, kind, hidden, last_tokens(ctx_tokens, ctx_length), drafts, step)


def model_features(session, ctx_length: torch.Tensor, window: int) -> torch.Tensor:
    """Features at positions L-1-W .. L-2 of each row, from the static session's kept hidden states. -> [B, W, C]"""
    from decspec.stdlib.eagle import feature_window

    return feature_window(session.hiddens, ctx_length, window)


def eagle_logits(model, features, ctx_tokens, ctx_length, drafts, step) -> torch.Tensor:
    """EAGLE-head logits of draft position `step` (an int, or a 0-d tensor in the host loop). -> [B, V]"""
    from decspec.stdlib.eagle import eagle_logits as draft_eagle_logits

    return draft_eagle_logits(model, features, ctx_tokens, ctx_length, drafts, step)


def grammar_state(session, table, start, ctx_tokens, ctx_length, ext, n, last: bool) -> torch.Tensor:
    """The grammar state after each row's generated tokens ++ ext[:, :n] -> [B] or [B, n+1]: on the device from the
    state after the committed tokens (`start`, walked by the runner once per round) when the grammar has a table
    (backends/grammar.py GrammarTable: regular grammars), else on the host (a graph break when compiled)."""
    if table is not None:
        return table.states(start, ext, n, last)
    return grammar_state_host(session, ctx_tokens, ctx_length, ext, n, last)


@torch.compiler.disable
def grammar_state_host(session, ctx_tokens, ctx_length, ext, n, last: bool) -> torch.Tensor:
    """grammar_state walked by the matcher (bytes in Python and numba): a graph break when the round is compiled."""
    return G.grammar_states(session, ctx_tokens, ctx_length, session.start, ext, n, last)


def grammar_forced(session, table, forced, start, ctx_tokens, ctx_length, k: int, ngram: int, vocab: int):
    """Drafts the grammar forces after each row's context: table lookups on the device when the grammar has a table
    (forced: GrammarTable.forced_tokens; start: the state after the committed tokens), else on the host (a graph
    break when compiled; with a table, the host also walks the state after its drafts, which forced_then's region
    starts its device walk from). -> d, q, count, and the state after the drafts [B] (None from the host)"""
    if table is not None and forced is not None:
        drafts, count, after = G.forced_drafts_on_device(table, forced, start, ctx_tokens, ctx_length, k, ngram)
        return drafts, E.one_hot_drafts(drafts, count, vocab), count, after
    drafts, q, count, after = grammar_forced_host(session, ctx_tokens, ctx_length, k, ngram, vocab)
    return drafts, q, count, (None if table is None else after)


@torch.compiler.disable
def grammar_forced_host(session, ctx_tokens, ctx_length, k: int, ngram: int, vocab: int):
    """grammar_forced walked by the matcher (forced_drafts): a graph break when the round is compiled.
    -> d, q, count, and the matcher's state after each row's drafts [B]"""
    drafts, count = G.forced_drafts(session, ctx_tokens, ctx_length, session.start, k, ngram)
    states = G.grammar_states(session, ctx_tokens, ctx_length, session.start, drafts, drafts.shape[1], last=False)  # [B, k+1]
    return drafts, E.one_hot_drafts(drafts, count, vocab), count, states.gather(1, count[:, None].to(states.device)).squeeze(1)


def forced_context(ctx_tokens, ctx_length, forced, count):
    """forced_then's region context: each row's context followed by its forced drafts. -> tokens [B, S], length [B]"""
    return S.extended_tokens(ctx_tokens, ctx_length, forced, count), ctx_length + count


def forced_then(forced, forced_q, forced_n, tokens, q, n, k: int):
    """The forced drafts, then the region's right after each row's (the eager rule's placement). -> d, q, count"""
    return S.forced_then_drafts(forced, forced_q, forced_n, tokens, q, n, k)


def grammar_mask(session, table, logits: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Refused tokens -> -inf: the packed mask rows gathered on the device when the grammar has a table, else
    built on the host (a graph break when compiled)."""
    if table is not None:
        return table.masked(logits, states)
    return grammar_mask_host(session, logits, states)


@torch.compiler.disable
def grammar_mask_host(session, logits: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    return G.masked_logits(session.matcher, logits, states)


class _Params:
    """An op's params as an eager rule reads them (op.param(name)), for the rules called as kernels."""

    def __init__(self, **params):
        self.params = params

    def param(self, name: str, default=None):
        return self.params.get(name, default)


def _tree_kernel(name: str):
    """The eager tree rule `name` as a kernel: inputs positionally, the op's params as keywords."""
    from decspec.backends.eager import tree as T

    rule = T.RULES[name]

    def kernel(*ins, **params):
        out = rule(None, _Params(**params), *ins)
        return out[0] if len(out) == 1 else out

    kernel.__name__ = name
    return kernel


for _name in TREE_KERNELS:
    globals()[_name] = _tree_kernel(_name)


def rejection_accept(p, q, d, drafted, u) -> torch.Tensor:
    return E.rejection_accept(None, None, p, q, d, drafted, u)[0]


def rejection_residual(p, q, n, drafted) -> torch.Tensor:
    return E.rejection_residual(None, None, p, q, n, drafted)[0]


def typical_accept(p, d, drafted, epsilon: float, delta: float) -> torch.Tensor:
    return A.typical_accepted(p, d, drafted, epsilon, delta)


def topk_accept(p, d, drafted, k: int) -> torch.Tensor:
    return A.topk_accepted(p, d, drafted, k)


def take_dist(p, index) -> torch.Tensor:
    return A.dist_at(p, index)


def match_len(d, t, drafted) -> torch.Tensor:
    return E.match_len(None, None, d, t, drafted)[0]


def take(tokens, index) -> torch.Tensor:
    return E.take(None, None, tokens, index)[0]


def splice(d, n, x) -> torch.Tensor:
    return E.splice(None, None, d, n, x)[0]


def commit_one(token: torch.Tensor):
    """A round without drafts commits one token per row. -> (tokens [B, 1], accepted [B], drafted [B])"""
    zeros = torch.zeros_like(token)
    return token[:, None], zeros, zeros


def draft_start(ctx_tokens: torch.Tensor, k: int, cap: torch.Tensor | None = None):
    """Empty draft-loop carry; with a length cap [B], rows capped at 0 draft nothing. -> drafts [B, K], probs (made at step 0), count [B], alive [B]"""
    B = ctx_tokens.shape[0]
    drafts = torch.zeros(B, k, dtype=torch.long, device=ctx_tokens.device)
    count = torch.zeros(B, dtype=torch.long, device=ctx_tokens.device)
    alive = torch.ones(B, dtype=torch.bool, device=ctx_tokens.device) if cap is None else cap > 0
    return drafts, None, count, alive


def carry_start(ctx_tokens: torch.Tensor, init: float) -> torch.Tensor:
    """A loop-carried value's start, per row. -> [B]"""
    return torch.full((ctx_tokens.shape[0],), init, device=ctx_tokens.device)


def draft_step(drafts, probs, count, alive, i: int, token, q, stop, cap=None):
    """Record step i for every row (rows that stopped keep drafting, masked out of `count`); a row
    also stops once it has drafted cap[b] tokens. -> probs, count, alive"""
    if probs is None:
        probs = q.new_zeros(*drafts.shape, q.shape[-1])  # [B, K, V]
    drafts[:, i] = token
    probs[:, i] = q
    return (probs, *_advance(count, alive, i, stop, cap))


def draft_step_at(drafts, probs, count, alive, i: torch.Tensor, token, q, stop, cap=None):
    """draft_step with the step index as a tensor (the host loop's compiled step): records by
    mask instead of by index, so one graph serves every step. -> probs, count, alive"""
    at = torch.arange(drafts.shape[1], device=drafts.device) == i  # [K]
    drafts.copy_(torch.where(at[None, :], token[:, None], drafts))
    probs = torch.where(at[None, :, None], q[:, None, :], probs)
    return (probs, *_advance(count, alive, i, stop, cap))


def _advance(count, alive, i, stop, cap):
    """After step i: count the rows still drafting, then stop rows whose exit policy fired or that reached their cap. -> count, alive"""
    count = count + alive.long()
    if stop is not None:
        alive = alive & ~stop
    if cap is not None:
        alive = alive & (i + 1 < cap)
    return count, alive


def staged_start(ctx_tokens: torch.Tensor, k: int):
    """A staged loop's empty drafts. -> drafts [B, K], probs (made by the first inner round), count [B]"""
    B = ctx_tokens.shape[0]
    drafts = torch.zeros(B, k, dtype=torch.long, device=ctx_tokens.device)
    return drafts, None, torch.zeros(B, dtype=torch.long, device=ctx_tokens.device)


def staged_context(ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, drafts: torch.Tensor, count: torch.Tensor):
    """An inner round's context: ctx ++ drafts[:, :count] per row. -> tokens [B, S], length [B]"""
    return S.extended_tokens(ctx_tokens, ctx_length, drafts, count), ctx_length + count


def staged_append(drafts, probs, count, tokens, p, n):
    """An inner round's n + 1 tokens (and p at each) put after each row's drafts, up to K (the eager rule's step;
    a full row takes nothing). -> drafts [B, K], probs [B, K, V], count [B]"""
    if probs is None:
        probs = p.new_zeros(*drafts.shape, p.shape[-1])
    return S.append(drafts, probs, count, tokens, p, n)


def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return E.mul(None, None, a, b)[0]


def predict_accept(name: str, prob, entropy, cumprob, step) -> torch.Tensor:
    """A registered predictor (stdlib/predictors.py), on this step's draft statistics; step: an int (unrolled) or a 0-d tensor."""
    from decspec.stdlib.predictors import predict

    return predict(name, prob, entropy, cumprob, step)


@functools.lru_cache(maxsize=None)
def step_indices(k: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The host loop's step numbers as 0-d tensors (a tensor argument is not specialized on: no recompiles)."""
    return tuple(torch.tensor(i, device=device) for i in range(k))
