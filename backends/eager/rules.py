"""The eager backend: every IR op as plain PyTorch. The reference semantics for all backends."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from decspec.backends.grammar import forced_drafts, grammar_states, masked_logits
from decspec.backends.interpreter import run_graph
from decspec.stdlib.combine import combine_logits
from decspec.stdlib.penalties import token_counts
from decspec.stdlib.samplers import apply_pipeline, per_row


def _dims(state, shape) -> tuple[int, ...]:
    return tuple(state.batch if d == "B" else int(d) for d in shape)


def model_call(state, op, ctx, ext=None, n=None):
    session = state.sessions[op.param("model")]
    n = None if n is None else int(n)
    width = getattr(ext, DRAFTED, None)
    if width is not None and n is None and not op.param("last") and width < ext.shape[1]:
        # drafts whose source says how many columns hold drafts in any row: the target reads only those, and the
        # positions past them (which every verifier leaves unread: they are past each row's count) get zeros
        logits = session.logits(ctx.tokens, ctx.length, ext, width, last=False)  # [B, width+1, V]
        return (torch.cat([logits, logits.new_zeros(logits.shape[0], ext.shape[1] - width, logits.shape[2])], 1),)
    return (session.logits(ctx.tokens, ctx.length, ext, n, last=op.param("last")),)


DRAFTED = "_decspec_drafted"  # an attribute of a variable-count source's drafts tensor: the largest count of the batch


def mark_drafted(drafts: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Tag drafts [B, K] with max(count), so a verifying model_call reads only the columns that hold drafts
    (prompt lookup and forced drafts often propose far fewer than their `max`)."""
    setattr(drafts, DRAFTED, int(count.max()) if count.numel() else 0)
    return drafts


def logits_transform(state, op, logits, ctx=None, ext=None, n=None):
    """The sampler stages; with the context the logits were read after, penalty stages count its tokens
    (ctx ++ ext[:, :n] for [B, V] logits, ctx ++ ext[:, :j] at each position j of [B, N+1, V] logits)."""
    stages = per_row(tuple((r.name, r.fields) for r in op.param("stages")), getattr(state, "sampling", None), logits)
    counts = None if ctx is None else context_counts(logits, ctx.tokens, ctx.length, ext, n)
    return (apply_pipeline(logits, stages, counts),)


def context_counts(logits, tokens, length, ext=None, n=None):
    """Token counts before each position of logits [B, V] or [B, N+1, V] (stdlib/penalties.py)."""
    return token_counts(tokens, length, ext, n, vocab=logits.shape[-1], positions=logits.dim() == 3, dtype=logits.dtype)


def softmax(state, op, logits):
    return (torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1),)  # float64 stays float64


def sampler_probs(state, op, logits, *context):
    """softmax(apply_pipeline(logits)): the fused sampler, bit-identical to its two ops."""
    (transformed,) = logits_transform(state, op, logits, *context)
    return softmax(state, op, transformed)


def uniform(state, op):
    u = torch.rand(_dims(state, op.param("shape")), generator=state.generator, device=state.device)
    draws = getattr(state, "draws", None)  # rows with seeds of their own (backends/draws.py)
    return (draws.fill(u, draws.op_key(op)) if draws else u,)


def sample_tokens(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: the token whose interval [cdf_{i-1}, cdf_i) holds u * total. [..., V], [...] -> [...]"""
    cdf = probs.cumsum(-1)
    x = (u * cdf[..., -1])[..., None]
    idx = torch.searchsorted(cdf.contiguous(), x.contiguous(), right=True).squeeze(-1)
    V = probs.shape[-1]
    last_with_mass = V - 1 - (probs.flip(-1) > 0).int().argmax(-1)  # guards u * total rounding up to total
    return torch.minimum(idx, last_with_mass)


def sample(state, op, probs, u):
    return (sample_tokens(probs, u),)


def argmax(state, op, probs):
    return (probs.argmax(-1),)


def token_prob(state, op, probs, tokens):
    return (probs.gather(-1, tokens[..., None]).squeeze(-1),)


def entropy(state, op, probs):
    logp = torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
    return (-(probs * logp).sum(-1),)


_CMP = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq, "!=": torch.ne}


def compare(state, op, x):
    return (_CMP[op.param("op")](x, op.param("value")),)


def logical(state, op, a, b):
    return ((a & b) if op.param("op") == "and" else (a | b),)


def logical_not(state, op, a):
    return (~a,)


@dataclass
class Drafted:
    """What the draft loop carries from step to step, per row."""

    drafts: torch.Tensor  # [B, K] tokens drafted so far
    probs: torch.Tensor | None  # [B, K, V] the distribution each was drawn from (made at the first step, when V is known)
    alive: torch.Tensor  # [B] still drafting
    count: torch.Tensor  # [B] tokens drafted
    cap: torch.Tensor | None = None  # [B] most tokens each row drafts this round (a cross-round length policy's choice)
    carried: tuple = ()  # the loop-carried values [B] the body reads and yields (draft_loop's `carry`)

    @classmethod
    def start(cls, batch: int, k: int, device, cap: torch.Tensor | None = None, carry: tuple = ()) -> "Drafted":
        drafts = torch.zeros(batch, k, dtype=torch.long, device=device)
        alive = torch.ones(batch, dtype=torch.bool, device=device) if cap is None else cap > 0
        carried = tuple(torch.full((batch,), float(c), device=device) for c in carry)
        return cls(drafts, None, alive, torch.zeros(batch, dtype=torch.long, device=device), cap, carried)

    def step(self, i: int, token: torch.Tensor, q: torch.Tensor, stop: torch.Tensor | None = None) -> bool:
        """Record step i: token [B] drawn from q [B, V]; a row stops after the step its stop flag [B]
        is set, or its cap is reached. -> whether every row has stopped."""
        if self.probs is None:
            self.probs = q.new_zeros(*self.drafts.shape, q.shape[-1])
        self.drafts[:, i] = token
        self.probs[:, i] = q
        self.count += self.alive
        if stop is not None:
            self.alive &= ~stop
        if self.cap is not None:
            self.alive &= i + 1 < self.cap
        return not bool(self.alive.any())

    def record(self, i: int, outs: list, n_carried: int) -> bool:
        """Record step i from the body's yield (token, q[, stop], carried'...). -> whether every row has stopped."""
        own = outs[: len(outs) - n_carried]
        if n_carried:
            self.carried = tuple(outs[len(outs) - n_carried:])
        return self.step(i, *own)


def draft_loop(state, op, ctx, cap=None):
    """Run the body up to max times; a row stops drafting after the step its stop flag is set, or
    after cap[b] steps (with cap[b] = 0 it drafts nothing)."""
    carry = Drafted.start(state.batch, op.param("max"), state.device, cap, op.param("carry", ()))
    for i in range(op.param("max")):
        outs = run_graph(op.region, [ctx, carry.drafts, torch.tensor(i), *carry.carried], state, state.rules, state.backend)
        if carry.record(i, outs, len(carry.carried)):
            break
    return carry.drafts, carry.probs, carry.count


def length_cap(state, op):
    """This round's per-row speculation length, from the generation's length policies (backends/speculation_length.py)."""
    if getattr(state, "policies", None) is None:
        raise RuntimeError("length_cap needs the generation loop's length policies (backends/runtime.py)")
    return (state.policies.cap(op).to(state.device),)


def mul(state, op, a, b):
    return (a * b,)


def predict_accept(state, op, prob, entropy, cumprob, step):
    """A registered predictor's estimate that the next draft is accepted (stdlib/predictors.py)."""
    from decspec.stdlib.predictors import predict

    return (predict(op.param("predictor"), prob, entropy, cumprob, step),)


def lookup_drafts(tokens: torch.Tensor, length: torch.Tensor, k: int, ngram: int, min_ngram: int,
                  earliest: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt lookup with static shapes: for n = ngram .. min_ngram, the most recent (earliest: the
    first) occurrence of each row's last n tokens that some token follows; the first n with one wins,
    and the up to k tokens after it are the drafts. tokens: [B, S], length: [B] -> drafts [B, K]
    (0 past count), count [B]"""
    B, S = tokens.shape
    L = length[:, None]  # [B, 1]
    start = torch.zeros(B, dtype=torch.long, device=tokens.device)  # [B] where the drafts begin
    found = torch.zeros(B, dtype=torch.bool, device=tokens.device)
    for n in range(min(ngram, S - 1), min_ngram - 1, -1):
        suffix = tokens.gather(1, (L - n + torch.arange(n, device=tokens.device)).clamp(min=0))  # [B, n] the last n tokens
        i = torch.arange(S - n + 1, device=tokens.device)[None, :]  # [1, W] window starts
        hit = (tokens.unfold(1, n, 1) == suffix[:, None, :]).all(-1) & (i + n < L)  # [B, W]: a match with a token after it
        last = torch.where(hit, i, S).amin(1) if earliest else torch.where(hit, i, -1).amax(1)  # [B] the match
        last = torch.where(last >= S, -1, last)  # -1 for none
        new = ~found & (last >= 0)
        start = torch.where(new, last + n, start)
        found = found | new
    count = torch.where(found, (length - start).clamp(max=k), 0)  # fewer where the context ends
    j = torch.arange(k, device=tokens.device)[None, :]  # [1, K]
    drafts = tokens.gather(1, (start[:, None] + j).clamp(max=S - 1))
    return torch.where(j < count[:, None], drafts, 0), count


def one_hot_drafts(drafts: torch.Tensor, count: torch.Tensor, vocab: int) -> torch.Tensor:
    """q_i = onehot(d_i) for i < count, zero rows after. drafts: [B, K], count: [B] -> [B, K, V]"""
    valid = torch.arange(drafts.shape[1], device=drafts.device)[None, :] < count[:, None]  # [B, K]
    q = torch.zeros(*drafts.shape, vocab, device=drafts.device)
    return q.scatter_(-1, drafts[..., None], valid[..., None].float())


def ngram_lookup(state, op, ctx):
    """Drafts copied from the context (Saxena 2023); q one-hot over the vocabulary of the model role `vocab`."""
    drafts, count = lookup_drafts(ctx.tokens, ctx.length, op.param("max"), op.param("ngram"), op.param("min_ngram"),
                                  op.param("earliest", False))
    vocab = state.sessions[op.param("vocab")].model.vocab_size
    return mark_drafted(drafts, count), one_hot_drafts(drafts, count, vocab), count


def grammar_state(state, op, ctx, ext=None, n=None):
    """The grammar's state after the row's generated tokens ++ ext[:, :n] (cached per row by its GrammarSession)."""
    session = state.grammars[op.param("grammar")]
    start = ctx.start if ctx.start is not None else session.start
    return (grammar_states(session, ctx.tokens, ctx.length, start, ext, n, last=op.param("last", True)),)


def grammar_forced(state, op, ctx):
    """Drafts the grammar forces after each row's context (backends/grammar.py forced_drafts); q one-hot."""
    session = state.grammars[op.param("grammar")]
    start = ctx.start if ctx.start is not None else session.start
    drafts, count = forced_drafts(session, ctx.tokens, ctx.length, start, op.param("max"), op.param("ngram"))
    vocab = state.sessions[op.param("vocab")].model.vocab_size
    return mark_drafted(drafts, count), one_hot_drafts(drafts, count, vocab), count


def grammar_mask(state, op, logits, states):
    """Tokens the grammar refuses -> -inf, before the sampler pipeline (EOS only where the grammar accepts)."""
    return (masked_logits(state.grammars[op.param("grammar")].matcher, logits, states),)


def logits_combine(state, op, *logits):
    """One distribution's scores from several models' logits (stdlib/combine.py: contrastive, DoLa)."""
    return (combine_logits(op.param("kind"), list(logits), **{k: v for k, v in op.params if k != "kind"}),)


def _prefix_len(ok: torch.Tensor, drafted: torch.Tensor) -> torch.Tensor:
    """Leading True count of ok [B, K], capped at drafted [B]."""
    K = ok.shape[1]
    ok = ok & (torch.arange(K, device=ok.device)[None, :] < drafted[:, None])
    return ok.long().cumprod(1).sum(1)


def rejection_accept(state, op, p, q, d, drafted, u):
    K = d.shape[1]
    pd = p[:, :K].gather(-1, d[..., None]).squeeze(-1)  # p_i(d_i): [B, K]
    qd = q.gather(-1, d[..., None]).squeeze(-1)  # q_i(d_i): [B, K]
    return (_prefix_len(u * qd < pd, drafted),)  # accept iff u < p/q


def rejection_residual(state, op, p, q, n, drafted):
    rows = torch.arange(p.shape[0], device=p.device)
    K = q.shape[1]
    pn = p[rows, n]  # [B, V]
    qn = q[rows, n.clamp(max=K - 1)]
    residual = (pn - qn).clamp_min(0)
    mass = residual.sum(-1, keepdim=True)
    use_residual = (n < drafted)[:, None] & (mass > 0)
    return (torch.where(use_residual, residual / mass.clamp_min(torch.finfo(mass.dtype).tiny), pn),)


def match_len(state, op, d, t, drafted):
    K = d.shape[1]
    return (_prefix_len(d == t[:, :K], drafted),)


def take(state, op, tokens, index):
    return (tokens.gather(1, index[:, None]).squeeze(1),)


def splice(state, op, d, n, x):
    out = torch.cat([d, d.new_zeros(d.shape[0], 1)], dim=1)  # [B, K+1]
    out.scatter_(1, n[:, None], x[:, None])
    return (out,)


def commit(state, op, tokens, accepted=None, drafted=None):
    if accepted is None:
        tokens = tokens[:, None]
        accepted = drafted = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    state.committed = (tokens, accepted, drafted)
    return ()


RULES = {
    "model_call": model_call,
    "logits_transform": logits_transform,
    "softmax": softmax,
    "sampler_probs": sampler_probs,
    "uniform": uniform,
    "sample": sample,
    "argmax": argmax,
    "token_prob": token_prob,
    "entropy": entropy,
    "compare": compare,
    "logical": logical,
    "logical_not": logical_not,
    "draft_loop": draft_loop,
    "length_cap": length_cap,
    "mul": mul,
    "predict_accept": predict_accept,
    "ngram_lookup": ngram_lookup,
    "grammar_forced": grammar_forced,
    "grammar_state": grammar_state,
    "grammar_mask": grammar_mask,
    "logits_combine": logits_combine,
    "rejection_accept": rejection_accept,
    "rejection_residual": rejection_residual,
    "match_len": match_len,
    "take": take,
    "splice": splice,
    "commit": commit,
}

from decspec.backends.eager.acceptance import RULES as _ACCEPTANCE  # noqa: E402  (the lossy verifiers' ops)

RULES.update(_ACCEPTANCE)

from decspec.backends.eager.heads import RULES as _HEADS  # noqa: E402  (the draft-head ops)

RULES.update(_HEADS)

from decspec.backends.eager.eagle import RULES as _EAGLE  # noqa: E402  (the EAGLE head's ops: backends/eager/eagle.py)

RULES.update(_EAGLE)

from decspec.backends.eager.tree import RULES as _TREE_RULES  # noqa: E402  (token trees: backends/eager/tree.py)

RULES.update(_TREE_RULES)

from decspec.backends.eager.dynamic_exit import RULES as _DYNAMIC_EXIT  # noqa: E402  (a draft source chosen per context)

RULES.update(_DYNAMIC_EXIT)

from decspec.backends.eager.staged import RULES as _STAGED  # noqa: E402  (staged drafting)

RULES.update(_STAGED)

from decspec.backends.draft_state import RULES as _DRAFT_STATE_RULES  # noqa: E402  (token recycling: backends/draft_state.py)

RULES.update(_DRAFT_STATE_RULES)
