"""Draft sources: where proposed tokens come from.

A draft source lowers to ops that produce a Proposal: tokens d [B,K], the probabilities q [B,K,V]
each d_i was sampled from, and per-row draft counts m [B] (an exit policy may stop rows early).
"""
from __future__ import annotations

from decspec.compiler.ir import CTX, Type
from decspec.compiler.lower import Lowering, Proposal
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.registry import Component, Contract, Param, register


def chain_draft(lw: Lowering, ctx, k: int, logits_at) -> Proposal:
    """The draft loop of a chain draft source: step i gets logits = logits_at(body_ctx, drafts, step)
    (read after ctx ++ d[:i]), samples d_i ~ q_i through the sampler pipeline and asks the exit policy.
    What logits_at emits lands in the loop's body."""
    outer = lw.nested("body")
    b = lw.b
    body_ctx = b.input(CTX)
    drafts = b.input(Type("tok", ("B", k)))
    step = b.input(Type("i64"))
    logits = logits_at(body_ctx, drafts, step)  # [B, V]
    q = lw.probs(logits)  # [B, V]
    token = lw.sample(q)  # [B]
    stop = lw.stop_flag(logits, token)
    tokens, probs, count = lw.draft_loop(outer, ctx, k, token, q, stop)  # the body closes here, with what the exit policy carries or caps
    return Proposal(tokens, probs, count, k)


def lower_autoregressive(lw: Lowering, inst, ctx):
    """Draft loop: step i feeds ctx ++ d[:i] to the draft, samples d_i ~ q_i, asks the exit policy."""
    role = lw.role(inst.arg("model"))
    # the draft's logits, grammar-masked when there is a grammar
    return chain_draft(lw, ctx, inst.arg("max"), lambda body_ctx, drafts, step: lw.model_logits([body_ctx, drafts, step], role))


register(
    Component(
        "draft",
        "autoregressive",
        (
            Param("model", "model", doc="the draft model"),
            Param("max", "int", default=4, low=1, high=64, doc="most tokens drafted per round"),
        ),
        "Sample up to `max` tokens from a draft model, one at a time, through the same sampler pipeline.",
        Contract(True, "each draft token is sampled from the draft's own distribution q, which the verifier receives"),
        lower_autoregressive,
        cite="Leviathan et al. 2023; Chen et al. 2023",
    )
)


def refuse_stop(lw: Lowering, name: str, hint: str) -> None:
    """A draft source without a draft model has no statistics for `stop` to read: a DecError at the stop slot."""
    if lw.stop is not None:
        raise DecError(f"`stop` reads the draft model's statistics, but `{name}` drafts without a model", lw.stop.span, hint=hint)


def lower_lookup(lw: Lowering, inst, ctx):
    """Prompt lookup: the drafts are the tokens that followed the latest earlier occurrence of the
    context's last n tokens; q is one-hot on each. No draft model, so no exit policy either."""
    k, n, lo = inst.arg("max"), inst.arg("ngram"), inst.arg("min_ngram")
    if lo > n:
        raise DecError(f"lookup's min_ngram ({lo}) is larger than its ngram ({n}): no n-gram size is left to try", inst.span,
                       hint=f"use min_ngram <= {n}")
    refuse_stop(lw, "lookup", "remove `stop`; lookup already drafts only as far as its match goes")
    target = lw.vocab_role()  # q's vocabulary: the target's (every bound model shares it)
    where = {"earliest": True} if inst.arg("earliest") else {}  # printed only when set: the default keeps its IR text
    tokens, probs, count = lw.b.emit("ngram_lookup", [ctx], max=k, ngram=n, min_ngram=lo, vocab=target, **where)
    return Proposal(tokens, probs, count, k)


register(
    Component(
        "draft",
        "lookup",
        (
            Param("ngram", "int", default=3, low=1, high=16, doc="longest suffix of the context looked up"),
            Param("min_ngram", "int", default=1, low=1, high=16, doc="shortest suffix tried when longer ones have no earlier occurrence"),
            Param("max", "int", default=4, low=1, high=64, doc="most tokens drafted per round"),
            Param("earliest", "bool", default=False, doc="take the earliest occurrence (as Hugging Face's prompt lookup does) "
                  "instead of the most recent: on code-editing prompts it copies from the quoted source"),
        ),
        "Prompt lookup: find the most recent (with `earliest = true`: the first) earlier occurrence of the context's last `ngram` tokens "
        "(then ngram-1, ..., `min_ngram`) and propose the up to `max` tokens that followed it; "
        "none when nothing matches (the round then commits the target's own token). No draft model.",
        Contract(True, "each draft token comes with its draft distribution q, one-hot on the token, which the verifier receives"),
        lower_lookup,
        cite="Saxena 2023, prompt lookup decoding",
    )
)


def forced_drafts(lw: Lowering, inst, ctx) -> tuple:
    """The `grammar_forced` op of `forced` and `forced_then` -> (tokens, one-hot q, count); a spec without a grammar is
    refused at the draft source."""
    if lw.grammar is None:
        raise DecError(f"`{inst.name}` drafts the tokens the grammar forces, but this spec has no grammar", inst.span,
                       hint="add a grammar slot (grammar = json_schema(\"schema.json\"), regex(...), ...) or use another draft source")
    target = lw.vocab_role()  # q's vocabulary
    return lw.b.emit("grammar_forced", [ctx], max=inst.arg("max"), ngram=inst.arg("ngram"), grammar="grammar", vocab=target)


def lower_forced(lw: Lowering, inst, ctx):
    """Grammar-forced drafts: the tokens the spec's grammar forces after the context, one-hot q. No draft model."""
    tokens, probs, count = forced_drafts(lw, inst, ctx)
    refuse_stop(lw, "forced", "remove `stop`; forced drafts end where the grammar stops forcing")
    return Proposal(tokens, probs, count, inst.arg("max"))


register(
    Component(
        "draft",
        "forced",
        (Param("max", "int", default=8, low=1, high=64, doc="most tokens drafted per round"),
         Param("ngram", "int", default=3, low=0, high=16, doc="where the grammar leaves a choice, look up the row's last `ngram` "
               "(.. 1) tokens in its earlier text and draft what followed if the grammar allows it; 0: off")),
        "Grammar-forced drafts (jump-forward): each draft is the token the spec's grammar forces in the state after the "
        "context and the drafts before it — the only token it allows, or, where every allowed token is a prefix of the "
        "longest (`\"`, `\"n`, `\"name` when the key must be `name`), the longest; where the grammar leaves a choice, the "
        "token a lookup of the row's last `ngram` tokens finds (its own habits: a space after `:`), else the forced token "
        "among the plain ones (no whitespace or escape). Drafting stops where none applies (where the grammar may end, only "
        "the lookup goes on) or at `max`. The target verifies them like any draft, so a guess the model would not make costs a rejection, never a "
        "wrong token. Needs a grammar; no draft model.",
        Contract(True, "each draft token comes with its draft distribution q, one-hot on the token (a function of the context), "
                       "which the verifier receives"),
        lower_forced,
        cite="SGLang's compressed finite-state machine (jump-forward decoding), Zheng et al. 2024",
        needs_grammar=True,
    )
)


THEN = ("autoregressive", "lookup")  # the draft sources forced_then runs after the forced tokens


def lower_forced_then(lw: Lowering, inst, ctx):
    """The forced drafts, then `then`'s drafts over ctx ++ the forced ones, in one round:

        f, qf, nf = grammar_forced[max=K](ctx)
        d, q, n = forced_then[max=K+M](ctx, f, qf, nf) ^then(ctx') { <then's draft source over ctx'> }

    where ctx' is each row's context followed by its forced drafts; the draft model (or lookup) sees them as context, so it
    spends no step on a token the grammar forces."""
    forced = forced_drafts(lw, inst, ctx)
    then = inst.arg("then")
    if then.name not in THEN:  # a chain over the extended context: no target features, no tree, no state across rounds
        raise DecError(f"forced_then's `then` must be {' or '.join(THEN)}, found '{then.name}'", then.span,
                       hint="use autoregressive(draft, max = 4) or lookup(...) after the forced tokens")
    k = inst.arg("max")
    outer = lw.nested("then")
    inner_ctx = lw.b.input(CTX)  # ctx ++ the row's forced drafts
    with lw.b.located(then.span, then.name):
        proposal: Proposal = then.component.lower(lw, then, inner_ctx)
    body = lw.b.build((proposal.tokens, proposal.probs, proposal.count))
    lw.restore(outer)
    total = k + proposal.max
    tokens, probs, count = lw.b.emit("forced_then", [ctx, *forced], region=body, max=total)
    return Proposal(tokens, probs, count, total)


register(
    Component(
        "draft",
        "forced_then",
        (Param("then", "draft", doc="the draft source after the forced tokens: autoregressive(model, ...) or lookup(...)"),
         Param("max", "int", default=8, low=1, high=64, doc="most forced tokens drafted per round (then's own max comes after)"),
         Param("ngram", "int", default=3, low=0, high=16, doc="as forced's: where the grammar leaves a choice, draft the row's "
               "habit by lookup before handing over (its spacing, say); 0: hand over at once")),
        "Grammar-forced drafts, then another draft source's: the tokens the grammar forces after the context (as `forced`), "
        "and after them, where the grammar leaves a choice, the drafts of `then` over the context followed by the forced "
        "tokens, all verified in one target call. The draft model spends no step on forced tokens: it reads them as "
        "context. Needs a grammar.",
        Contract(True, "each forced token comes with q one-hot on it (a function of the context), and each of `then`'s "
                       "with the distribution it was drawn from given the tokens before it; the verifier receives them all"),
        lower_forced_then,
        cite="SGLang's jump-forward decoding (Zheng et al. 2024) composed with speculative sampling (Leviathan et al. 2023)",
        needs_grammar=True,
    )
)
