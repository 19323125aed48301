"""The IR's op set: for each op, its effect, its type rule and what it means.

Effects: "pure" ops are functions of their inputs; "model" ops call a bound model (a pure
function of the token sequence, cached by the runtime); "random" ops (only `uniform`) draw fresh
randomness and are never merged or duplicated; "sink" ops (`commit`) are the round's effect.
Ops that consume randomness name the inputs that must come straight from a `uniform` (`draws`),
so each draw is explicit and the exact backend can branch on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from decspec.compiler.ir import CTX, Dim, Type

TypeRule = Callable[[dict[str, Any], list[Type]], list[Type]]


@dataclass(frozen=True)
class OpDef:
    name: str
    effect: str  # "pure" | "model" | "random" | "sink"
    rule: TypeRule
    doc: str
    draws: tuple[int, ...] = ()
    has_region: bool = False
    region_rule: Callable[[dict[str, Any], Any], None] | None = None  # checks the region's signature


class IRTypeError(TypeError):
    pass


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise IRTypeError(msg)


def _plus(d: Dim, k: int) -> Dim:
    return d + k if isinstance(d, int) else (f"{d}+{k}" if k else d)


def _t(dtype: str, *shape: Dim) -> Type:
    return Type(dtype, tuple(shape))


def _model_call(p, ins):
    _expect(ins and ins[0] == CTX, "model_call takes the context first")
    _expect(len(ins) <= 3, "model_call takes (ctx[, ext[, n]])")
    n_ext = 0
    if len(ins) >= 2:
        _expect(ins[1].dtype == "tok" and len(ins[1].shape) == 2, "model_call ext must be tok[B,N]")
        n_ext = ins[1].shape[1]
    if len(ins) == 3:
        _expect(ins[2] == _t("i64"), "model_call n must be a scalar i64")
    if p.get("last", True):
        return [_t("f32", "B", "V")]
    return [_t("f32", "B", _plus(n_ext, 1), "V")]


def _model_hidden(p, ins):
    _expect(isinstance(p.get("model"), str), "model_hidden model must name a model role")
    _expect(len(ins) == 1 and ins[0] == CTX, "model_hidden takes the context")
    return [_t("f32", "B", "C")]


def _head_logits(p, ins):
    _expect(p.get("kind") in ("medusa", "hydra"), f"head_logits kind must be \"medusa\" or \"hydra\", got {p.get('kind')!r}")
    _expect(isinstance(p.get("model"), str), "head_logits model must name a model role")
    _expect(len(ins) == 4, "head_logits takes (hidden, ctx, drafts, step)")
    _expect(ins[0] == _t("f32", "B", "C") and ins[1] == CTX, "head_logits takes hidden f32[B,C] and the context first")
    _expect(ins[2].dtype == "tok" and len(ins[2].shape) == 2 and ins[3] == _t("i64"), "head_logits takes drafts tok[B,K] and a step i64[]")
    return [_t("f32", "B", "V")]


def _model_features(p, ins):
    _expect(isinstance(p.get("model"), str), "model_features model must name a model role")
    _expect(isinstance(p.get("window"), int) and p["window"] >= 1, "model_features window must be a positive int")
    _expect(len(ins) == 1 and ins[0] == CTX, "model_features takes the context")
    return [_t("f32", "B", p["window"], "C")]


def _eagle_logits(p, ins):
    _expect(isinstance(p.get("model"), str), "eagle_logits model must name a model role")
    _expect(len(ins) == 4, "eagle_logits takes (features, ctx, drafts, step)")
    _expect(ins[0].dtype == "f32" and len(ins[0].shape) == 3 and ins[1] == CTX, "eagle_logits takes features f32[B,W,C] and the context first")
    _expect(ins[2].dtype == "tok" and len(ins[2].shape) == 2 and ins[3] == _t("i64"), "eagle_logits takes drafts tok[B,K] and a step i64[]")
    return [_t("f32", "B", "V")]


def _same(p, ins):
    _expect(len(ins) == 1 and ins[0].dtype == "f32", "expects one f32 tensor")
    return [ins[0]]


def _sampler(p, ins):
    """(logits[, ctx[, ext[, n]]]): penalty stages read the context the logits were read after, as model_call takes it."""
    _expect(ins and ins[0].dtype == "f32", "expects f32 logits first")
    if len(ins) > 1:
        read = _model_call({"last": len(ins[0].shape) == 2}, ins[1:])[0]
        _expect(read.shape[:-1] == ins[0].shape[:-1], f"logits {ins[0]} were not read after this context (that gives {read})")
    return [ins[0]]


def _uniform(p, ins):
    _expect(not ins, "uniform takes no inputs")
    return [Type("f32", tuple(p["shape"]))]


def _dist_to(dtype):
    def rule(p, ins):
        _expect(ins[0].dtype == "f32" and len(ins[0].shape) >= 1, "expects probabilities f32[..., V]")
        return [Type(dtype, ins[0].shape[:-1])]

    return rule


def _sample(p, ins):
    _expect(len(ins) == 2, "sample takes (probs, uniform)")
    _expect(ins[1] == Type("f32", ins[0].shape[:-1]), f"sample's uniform must be f32{list(ins[0].shape[:-1])}, got {ins[1]}")
    return [Type("tok", ins[0].shape[:-1])]


def _token_prob(p, ins):
    _expect(len(ins) == 2 and ins[1].dtype == "tok", "token_prob takes (probs, tokens)")
    return [Type("f32", ins[0].shape[:-1])]


def _compare(p, ins):
    _expect(p["op"] in ("<", "<=", ">", ">=", "==", "!="), f"unknown comparison {p['op']!r}")
    return [Type("bool", ins[0].shape)]


def _logical(p, ins):
    _expect(p["op"] in ("and", "or"), f"unknown logical op {p['op']!r}")
    _expect(len(ins) == 2 and ins[0].dtype == ins[1].dtype == "bool", "logical takes two bool tensors")
    return [ins[0]]


def _logical_not(p, ins):
    _expect(len(ins) == 1 and ins[0].dtype == "bool", "logical_not takes one bool tensor")
    return [ins[0]]


def _draft_loop(p, ins):
    k = p["max"]
    _expect(isinstance(k, int) and k >= 1, "draft_loop max must be a positive int")
    _expect(len(ins) in (1, 2) and ins[0] == CTX, "draft_loop takes the context (and a per-row cap)")
    _expect(ins[1:] in ([], [_t("i64", "B")]), f"draft_loop's cap must be i64[B], got {ins[1:] and ins[1]}")
    carry = p.get("carry", ())
    _expect(isinstance(carry, (tuple, list)) and all(isinstance(c, (int, float)) for c in carry), "draft_loop carry must list numbers")
    return [_t("tok", "B", k), _t("f32", "B", k, "V"), _t("i64", "B")]


def _draft_body(p, region):
    k, n = p["max"], len(p.get("carry", ()))
    got = [v.type for v in region.inputs]
    carried = [_t("f32", "B")] * n
    _expect(got == [CTX, _t("tok", "B", k), _t("i64")] + carried,
            f"draft_loop body must take (ctx, tok[B,{k}], i64[]{', f32[B]' * n}), got ({', '.join(map(str, got))})")
    out = [v.type for v in region.outputs]
    own = out[: len(out) - n]
    _expect(out[len(out) - n:] == carried and own[:2] == [_t("tok", "B"), _t("f32", "B", "V")] and own[2:] in ([], [_t("bool", "B")]),
            f"draft_loop body must yield (tok[B], f32[B,V][, bool[B]]{', f32[B]' * n}), got ({', '.join(map(str, out))})")


def _length_cap(p, ins):
    _expect(not ins, "length_cap takes no inputs")
    _expect(isinstance(p.get("policy"), str), "length_cap policy must name a length policy")
    _expect(isinstance(p.get("max"), int) and p["max"] >= 1, "length_cap max must be a positive int")
    return [_t("i64", "B")]


def _mul(p, ins):
    _expect(len(ins) == 2 and all(t.dtype == "f32" for t in ins) and ins[0].shape == ins[1].shape, "mul takes two f32 tensors of one shape")
    return [ins[0]]


def _predict_accept(p, ins):
    _expect(isinstance(p.get("predictor"), str), "predict_accept predictor must name a registered predictor")
    _expect(len(ins) == 4 and [t for t in ins[:3]] == [_t("f32", "B")] * 3 and ins[3] == _t("i64"),
            "predict_accept takes (prob f32[B], entropy f32[B], cumprob f32[B], step i64[])")
    return [_t("f32", "B")]


def _ngram_lookup(p, ins):
    k, n, lo = p.get("max"), p.get("ngram"), p.get("min_ngram")
    _expect(isinstance(k, int) and k >= 1, "ngram_lookup max must be a positive int")
    _expect(isinstance(n, int) and isinstance(lo, int) and 1 <= lo <= n, "ngram_lookup needs ints 1 <= min_ngram <= ngram")
    _expect(isinstance(p.get("vocab"), str), "ngram_lookup vocab must name a model role")
    _expect(isinstance(p.get("earliest", False), bool), "ngram_lookup earliest must be a bool")
    _expect(len(ins) == 1 and ins[0] == CTX, "ngram_lookup takes the context")
    return [_t("tok", "B", k), _t("f32", "B", k, "V"), _t("i64", "B")]


def _grammar_forced(p, ins):
    _expect(isinstance(p.get("max"), int) and p["max"] >= 1, "grammar_forced max must be a positive int")
    _expect(isinstance(p.get("grammar"), str), "grammar_forced grammar must name a grammar slot")
    _expect(isinstance(p.get("ngram"), int) and p["ngram"] >= 0, "grammar_forced ngram must be an int >= 0")
    _expect(isinstance(p.get("vocab"), str), "grammar_forced vocab must name a model role")
    _expect(len(ins) == 1 and ins[0] == CTX, "grammar_forced takes the context")
    return [_t("tok", "B", p["max"]), _t("f32", "B", p["max"], "V"), _t("i64", "B")]


def _recycle_state(p, ins):
    _expect(not ins, "recycle_state takes no inputs")
    _expect(isinstance(p.get("candidates"), int) and p["candidates"] >= 1, "recycle_state candidates must be a positive int")
    _expect(isinstance(p.get("vocab"), str), "recycle_state vocab must name a model role")
    return [_t("i64", "B", "V", p["candidates"])]


def _recycle_draft(p, ins):
    k = p.get("max")
    _expect(isinstance(k, int) and k >= 1, "recycle_draft max must be a positive int")
    _expect(isinstance(p.get("vocab"), str), "recycle_draft vocab must name a model role")
    _expect(len(ins) == 2 and ins[0] == CTX and ins[1].dtype == "i64" and ins[1].shape[:2] == ("B", "V"),
            "recycle_draft takes (ctx, adjacency i64[B,V,C])")
    return [_t("tok", "B", k), _t("f32", "B", k, "V"), _t("i64", "B")]


def _recycle_tree(p, ins):
    parents = p.get("parents")
    _expect(isinstance(parents, tuple) and parents and all(isinstance(x, int) and 0 <= x <= i for i, x in enumerate(parents)),
            "recycle_tree parents must list each node's parent position (0: the root), breadth-first")
    _expect(isinstance(p.get("vocab"), str), "recycle_tree vocab must name a model role")
    _expect(len(ins) == 2 and ins[0] == CTX and ins[1].dtype == "i64" and ins[1].shape[:2] == ("B", "V"),
            "recycle_tree takes (ctx, adjacency i64[B,V,C])")
    N = len(parents)
    return [_t("tok", "B", N), _t("f32", "B", N, "V"), _t("i64", "B")]


def _recycle_update(p, ins):
    c = p.get("candidates")
    _expect(isinstance(c, int) and c >= 1, "recycle_update candidates must be a positive int")
    _expect(len(ins) == 5 and ins[0] == _t("i64", "B", "V", c) and ins[1] == CTX and ins[2].dtype == "tok"
            and ins[3] == _t("i64", "B") and ins[4].dtype == "f32" and len(ins[4].shape) == 3,
            f"recycle_update takes (adjacency i64[B,V,{c}], ctx, drafts tok[B,K], drafted i64[B], target logits f32[B,K+1,V])")
    return [ins[0]]


def _recycle_store(p, ins):
    c = p.get("candidates")
    _expect(isinstance(c, int) and isinstance(p.get("vocab"), str), "recycle_store needs candidates and vocab, as recycle_state's")
    _expect(len(ins) == 1 and ins[0] == _t("i64", "B", "V", c), f"recycle_store takes the adjacency i64[B,V,{c}]")
    return []


def _lookahead_shapes(p, name):
    W, N, G = p.get("window"), p.get("ngram"), p.get("pool")
    _expect(all(isinstance(x, int) for x in (W, N, G)) and W >= 1 and 2 <= N <= W and G >= 1,
            f"{name} needs ints window >= ngram >= 2 and pool >= 1")
    _expect(isinstance(p.get("vocab"), str), f"{name} vocab must name a model role")
    return [_t("i64", "B", N - 1, W), _t("i64", "B", "V", G, N - 1)]


def _lookahead_state(p, ins):
    _expect(not ins, "lookahead_state takes no inputs")
    return _lookahead_shapes(p, "lookahead_state")


def _lookahead_guess(p, ins):
    _expect(len(ins) == 2 and ins[0] == CTX and ins[1].dtype == "i64" and len(ins[1].shape) == 3,
            "lookahead_guess takes (ctx, levels i64[B,N-1,W])")
    return [_t("tok", "B", ins[1].shape[2])]


def _lookahead_collect(p, ins):
    _expect(len(ins) == 4 and ins[0] == CTX and ins[1].dtype == "i64" and len(ins[1].shape) == 3 and ins[2].dtype == "i64"
            and len(ins[2].shape) == 4 and ins[3].dtype == "f32" and len(ins[3].shape) == 3,
            "lookahead_collect takes (ctx, levels i64[B,N-1,W], pool i64[B,V,G,N-1], logits f32[B,W+1,V])")
    W = ins[1].shape[2]
    _expect(ins[3].shape[1] == _plus(W, 1), f"lookahead_collect logits must cover the {W} guessed positions and the one after")
    return [ins[1], ins[2]]


def _lookahead_draft(p, ins):
    k = p.get("max")
    _expect(isinstance(k, int) and k >= 1 and isinstance(p.get("vocab"), str), "lookahead_draft needs max >= 1 and a vocab role")
    _expect(len(ins) == 2 and ins[0] == CTX and ins[1].dtype == "i64" and len(ins[1].shape) == 4 and ins[1].shape[3] == k,
            f"lookahead_draft takes (ctx, pool i64[B,V,G,{k}])")
    return [_t("tok", "B", k), _t("f32", "B", k, "V"), _t("i64", "B")]


def _lookahead_store(p, ins):
    _expect(len(ins) == 2 and ins == _lookahead_shapes(p, "lookahead_store"), "lookahead_store takes (levels, pool) as lookahead_state gives them")
    return []


def _grammar_state(p, ins):
    _expect(isinstance(p.get("grammar"), str), "grammar_state grammar must name a grammar slot")
    _expect(ins and ins[0] == CTX, "grammar_state takes the context first")
    _expect(len(ins) <= 3, "grammar_state takes (ctx[, ext[, n]])")
    n_ext = 0
    if len(ins) >= 2:
        _expect(ins[1].dtype == "tok" and len(ins[1].shape) == 2, "grammar_state ext must be tok[B,N]")
        n_ext = ins[1].shape[1]
    if len(ins) == 3:
        _expect(ins[2] == _t("i64"), "grammar_state n must be a scalar i64")
    if p.get("last", True):
        return [_t("i64", "B")]
    return [_t("i64", "B", _plus(n_ext, 1))]


def _grammar_mask(p, ins):
    _expect(isinstance(p.get("grammar"), str), "grammar_mask grammar must name a grammar slot")
    _expect(len(ins) == 2 and ins[0].dtype == "f32" and ins[1].dtype == "i64", "grammar_mask takes (logits, states)")
    _expect(ins[1].shape == ins[0].shape[:-1], f"grammar_mask states must be i64{list(ins[0].shape[:-1])}, got {ins[1]}")
    return [ins[0]]


def _rejection_accept(p, ins):
    _expect(len(ins) == 5, "rejection_accept takes (p, q, drafts, drafted, uniform)")
    return [_t("i64", "B")]


def _residual(p, ins):
    _expect(len(ins) == 4, "rejection_residual takes (p, q, accepted, drafted)")
    return [_t("f32", "B", "V")]


def _threshold_accept(name, params):
    def rule(p, ins):
        _expect(len(ins) == 3 and ins[0].dtype == "f32" and ins[1].dtype == "tok" and ins[2].dtype == "i64",
                f"{name} takes (p[B,K+1,V], drafts[B,K], drafted[B])")
        _expect(len(ins[0].shape) == 3 and len(ins[1].shape) == 2, f"{name} takes p[B,K+1,V] and drafts[B,K]")
        for key, kind in params:
            _expect(isinstance(p.get(key), kind) and not isinstance(p.get(key), bool), f"{name} needs a number {key}")
        return [_t("i64", "B")]

    return rule


def _take_dist(p, ins):
    _expect(len(ins) == 2 and ins[0].dtype == "f32" and len(ins[0].shape) == 3 and ins[1].dtype == "i64",
            "take_dist takes (p[B,N,V], index[B])")
    return [_t("f32", "B", ins[0].shape[2])]


def _match_len(p, ins):
    _expect(len(ins) == 3, "match_len takes (drafts, target_tokens, drafted)")
    return [_t("i64", "B")]


def _take(p, ins):
    _expect(len(ins) == 2 and ins[0].dtype == "tok" and ins[1].dtype == "i64", "take takes (tokens[B,N], index[B])")
    return [_t("tok", "B")]


def _splice(p, ins):
    _expect(len(ins) == 3, "splice takes (drafts[B,K], accepted[B], token[B])")
    return [_t("tok", "B", _plus(ins[0].shape[1], 1))]


def _commit(p, ins):
    _expect(len(ins) in (1, 3), "commit takes (token[B]) or (tokens[B,N], accepted[B], drafted[B])")
    return []


OPS: dict[str, OpDef] = {
    d.name: d
    for d in [
        OpDef("model_call", "model", _model_call, "logits after ctx ++ ext[:, :n]: the last position (last=true) or every position from the end of ctx"),
        OpDef("model_hidden", "model", _model_hidden, "the model's final hidden state at ctx's second-to-last position: the vector its "
              "head turned into the distribution of ctx's last token (what Medusa/Hydra heads read); zeros for a one-token context"),
        OpDef("head_logits", "model", _head_logits, "draft-head logits for draft position `step` (token L+step, L = ctx length) from "
              "the hidden state: Medusa head step (independent of the drafts), or Hydra head step after reading ctx's last "
              "token and drafts[:, :step] (teacher-forced)"),
        OpDef("model_features", "model", _model_features, "the model's features (final hidden states) at ctx's positions "
              "L-1-window .. L-2, kept from its previous forwards (what an EAGLE head reads); zeros before position 0"),
        OpDef("eagle_logits", "model", _eagle_logits, "EAGLE-head logits for draft position `step` (token L+step): the head reads "
              "the features with the tokens that followed them, then its own predicted features with drafts[:, :step]"),
        OpDef("logits_transform", "pure", _sampler, "apply the sampler stages to logits; with (ctx[, ext[, n]]) after them, "
              "the sequence the logits were read after (as model_call's), which penalty stages count tokens in"),
        OpDef("softmax", "pure", _same, "probabilities from logits"),
        OpDef("sampler_probs", "pure", _sampler, "softmax(logits_transform[stages](logits)) as one op (made by the fuse_sampler pass): identical "
              "stages on target and draft give the same op definition, which a compiling backend compiles once and shares"),
        OpDef("uniform", "random", _uniform, "fresh U[0,1) draws of the given shape"),
        OpDef("sample", "pure", _sample, "categorical draw by inverse CDF: the token whose CDF interval holds u", draws=(1,)),
        OpDef("argmax", "pure", _dist_to("tok"), "most likely token (first on ties)"),
        OpDef("token_prob", "pure", _token_prob, "p[t]: probability of the given token"),
        OpDef("entropy", "pure", _dist_to("f32"), "H(p) in nats"),
        OpDef("compare", "pure", _compare, "x OP value, elementwise"),
        OpDef("logical", "pure", _logical, "a and/or b"),
        OpDef("logical_not", "pure", _logical_not, "not a"),
        OpDef("draft_loop", "pure", _draft_loop, "run the body up to max times: (ctx, drafts so far, step, carried...) -> (token, probs[, stop], "
              "carried'...); a row stops after the step its stop flag is set, or after cap[b] steps when a cap [B] is given (0: no drafts). "
              "`carry` lists the initial value of each loop-carried f32[B] (the body gets step i-1's yield at step i)", has_region=True, region_rule=_draft_body),
        OpDef("length_cap", "pure", _length_cap, "this round's speculation length per row, in [0, max]: a cross-round length policy's choice "
              "(`policy` and its params), made on the host from the rows' earlier rounds (backends/speculation_length.py); an input of the "
              "round like the context, so a compiled round never changes shape"),
        OpDef("mul", "pure", _mul, "a * b, elementwise"),
        OpDef("predict_accept", "pure", _predict_accept, "a registered predictor's estimate in [0, 1] that the next draft is accepted, "
              "from this step's draft statistics (stdlib/predictors.py)"),
        OpDef("ngram_lookup", "pure", _ngram_lookup, "prompt lookup: find the most recent (`earliest`: the first) earlier occurrence in ctx of ctx's last n tokens "
              "(n = ngram, ngram-1, ..., min_ngram; the first n that matches wins) and propose the up to max tokens that followed it "
              "(fewer where ctx ends; none without a match): tokens d [B,K], their distributions q [B,K,V], one-hot on each d_i "
              "(zero rows past the count), and the count [B]. V is the vocabulary of the model role `vocab`, read from the "
              "bound model at run time, as model_call's V is; q is still made as a tensor so every verifier takes it unchanged"),
        OpDef("grammar_forced", "pure", _grammar_forced, "the up to max tokens the grammar forces after each row's generated tokens, "
              "one after another (the only allowed token, or the longest where every allowed token is a prefix of it: "
              "backends/grammar.py forced_drafts): tokens d [B,K], q [B,K,V] one-hot on each d_i (zero rows past the count), "
              "the count [B]; V from the model role `vocab`, as ngram_lookup's"),
        OpDef("recycle_state", "pure", _recycle_state, "token recycling's adjacency matrix going into the round, per row: M[t] holds "
              "the `candidates` tokens the target scored highest the last time it read token t (-1: not read yet). Carried "
              "across rounds by the runtime (backends/draft_state.py), an input of the round like length_cap's cap"),
        OpDef("recycle_draft", "pure", _recycle_draft, "token recycling's chain: d_1 = M[last, 0], d_i = M[d_{i-1}, 0] from ctx's last "
              "token, up to max, stopping at a token not read yet: tokens d [B,K], one-hot q [B,K,V] (zero rows past the "
              "count), count [B]; V from the bound model role `vocab`"),
        OpDef("recycle_tree", "pure", _recycle_tree, "token recycling's static tree: the j-th child of a node reading token t "
              "is M[t, j] (the root reads ctx's last token; 0 under an unseen row): tokens [B,N] breadth-first over `parents`, "
              "one-hot q [B,N,V], count [B] = N"),
        OpDef("recycle_update", "pure", _recycle_update, "M' = M with M'[t_j] = the `candidates` tokens of highest target logit at "
              "every scored position j <= drafted (t_0: ctx's last token, t_j: d_j, rejected or not; a later position wins)"),
        OpDef("recycle_store", "sink", _recycle_store, "hand the adjacency matrix to the runtime for the next round (the state "
              "recycle_state with the same params reads)"),
        OpDef("lookahead_state", "pure", _lookahead_state, "lookahead decoding's state going into the round, per row: the last "
              "N-1 Jacobi iterates over W future positions (levels, oldest first; -1 before the first) and the n-gram pool "
              "(for each first token, the N-1 following tokens of the G n-grams last collected with it, newest first; -1: "
              "empty). Carried across rounds by the runtime (backends/draft_state.py)"),
        OpDef("lookahead_guess", "pure", _lookahead_guess, "the newest iterate [B, W] (the context's last W tokens, cyclically, "
              "before the first): what the lookahead branch feeds the target after ctx"),
        OpDef("lookahead_collect", "pure", _lookahead_collect, "one Jacobi step: x'_i = argmax logits[:, i] over the W guessed "
              "positions; levels' = levels[1:] ++ x'; each diagonal (level_0[i], level_1[i+1], ..., x'[i+N-1]) enters the pool "
              "under its first token, at the front (moved there if present; the oldest falls off)"),
        OpDef("lookahead_draft", "pure", _lookahead_draft, "the pool's newest n-gram under ctx's last token: its max = N-1 "
              "following tokens d [B,K] with one-hot q [B,K,V] and count [B] (max, or 0 when there is none); V from `vocab`"),
        OpDef("lookahead_store", "sink", _lookahead_store, "hand (levels, pool) to the runtime for the next round (the state "
              "lookahead_state with the same params reads)"),
        OpDef("grammar_state", "pure", _grammar_state, "the grammar's state after each row's generated tokens (ctx past its prompt: "
              "the prompt is not constrained) followed by ext[:, :n]: the last position (last=true, i64[B]) or every position from "
              "the end of ctx (last=false, i64[B,N+1]), as model_call reads logits; -1 after a token the grammar refuses. The "
              "matcher is bound at compile time to the slot `grammar` names"),
        OpDef("grammar_mask", "pure", _grammar_mask, "logits with the tokens the grammar refuses in each state set to -inf "
              "(EOS allowed exactly where the grammar accepts); a state of -1 leaves its row unconstrained"),
        OpDef("rejection_accept", "pure", _rejection_accept, "accepted prefix length: d_i accepted iff u_i * q_i(d_i) < p_i(d_i), capped at drafted", draws=(4,)),
        OpDef("rejection_residual", "pure", _residual, "norm(max(0, p_n - q_n)) after a rejection at n; p_m after a full accept"),
        OpDef("typical_accept", "pure", _threshold_accept("typical_accept", (("epsilon", (int, float)), ("delta", (int, float)))),
              "accepted prefix length (Medusa's typical acceptance): d_i accepted iff p_i(d_i) > min(epsilon, delta * exp(-H(p_i))), "
              "capped at drafted; no draw"),
        OpDef("topk_accept", "pure", _threshold_accept("topk_accept", (("k", int),)),
              "accepted prefix length: d_i accepted iff p_i(d_i) > 0 and fewer than k tokens are strictly more likely, capped at drafted"),
        OpDef("take_dist", "pure", _take_dist, "p[b, index[b]]: the distribution at each row's position"),
        OpDef("match_len", "pure", _match_len, "leading positions where drafts equal the target's tokens, capped at drafted"),
        OpDef("take", "pure", _take, "tokens[b, index[b]]"),
        OpDef("splice", "pure", _splice, "drafts[:, :n] followed by token: the round's new tokens (count n + 1)"),
        OpDef("commit", "sink", _commit, "append tokens[:, :accepted+1] (or the single token) to the context"),
    ]
}


def opdef(name: str) -> OpDef:
    if name not in OPS:
        raise KeyError(f"unknown IR op {name!r}")
    return OPS[name]


from decspec.compiler.ops_tree import TREE_OPS  # noqa: E402  (token trees: their type rules live beside them)

OPS.update(TREE_OPS)


def _draft_arm(p, ins):
    _expect(not ins, "draft_arm takes no inputs")
    _expect(isinstance(p.get("policy"), str), "draft_arm policy must name an arm policy")
    arms = p.get("arms")
    _expect(isinstance(arms, (tuple, list)) and len(arms) >= 1, "draft_arm arms must list the arms")
    return [_t("i64", "B")]


def _model_select(p, ins):
    models = p.get("models")
    _expect(isinstance(models, (tuple, list)) and models and all(isinstance(m, str) for m in models), "model_select models must list model roles")
    _expect(ins and ins[0] == _t("i64", "B"), "model_select takes the arm i64[B] first")
    return _model_call(p, ins[1:])


OPS.update({  # draft sources chosen per context (stdlib/dynamic_exit.py)
    d.name: d
    for d in [
        OpDef("draft_arm", "pure", _draft_arm, "this round's draft source per row, an index into `arms`: a cross-round arm policy's "
              "choice (`policy` and its params), made on the host from the rows' earlier rounds (backends/speculation_length.py), "
              "fixed for the whole round like length_cap's cap"),
        OpDef("model_select", "model", _model_select, "model_call of model models[arm[b]] for row b: logits after ctx ++ ext[:, :n] "
              "(arm, ctx[, ext[, n]]), as model_call's"),
    ]
})


def _staged_loop(p, ins):
    k = p.get("max")
    _expect(isinstance(k, int) and k >= 1, "staged_loop max must be a positive int")
    _expect(ins == [CTX], "staged_loop takes the context")
    return [_t("tok", "B", k), _t("f32", "B", k, "V"), _t("i64", "B")]


def _drafting_body(name: str):
    """The region rule of an op whose body drafts over an extended context: (ctx) -> (tok[B,N], f32[B,N,V], i64[B])."""

    def rule(p, region):
        got = [v.type for v in region.inputs]
        _expect(got == [CTX], f"{name} body must take (ctx), got ({', '.join(map(str, got))})")
        out = [v.type for v in region.outputs]
        ok = len(out) == 3 and out[0].dtype == "tok" and len(out[0].shape) == 2 and out[2] == _t("i64", "B")
        _expect(ok and out[1] == _t("f32", "B", out[0].shape[1], "V"),
                f"{name} body must yield (tok[B,N], f32[B,N,V], i64[B]), got ({', '.join(map(str, out))})")

    return rule


def _forced_then(p, ins):
    k = p.get("max")
    _expect(isinstance(k, int) and k >= 1, "forced_then max must be a positive int")
    ok = (len(ins) == 4 and ins[0] == CTX and ins[1].dtype == "tok" and len(ins[1].shape) == 2 and ins[3] == _t("i64", "B")
          and ins[2] == _t("f32", "B", ins[1].shape[1], "V"))
    _expect(ok, "forced_then takes (ctx, the forced drafts tok[B,K], their distributions f32[B,K,V], their counts i64[B])")
    return [_t("tok", "B", k), _t("f32", "B", k, "V"), _t("i64", "B")]


OPS["forced_then"] = OpDef(  # grammar-forced drafts, then another draft source after them (stdlib/drafts.py forced_then)
    "forced_then", "pure", _forced_then, "the forced drafts (ins 1-3: tokens, one-hot q, count), then the body's drafts over ctx ++ "
    "forced[:count] (per row), appended after each row's forced ones: (tokens [B,max], q [B,max,V], count [B])", has_region=True,
    region_rule=_drafting_body("forced_then"))

OPS["staged_loop"] = OpDef(  # staged drafting (stdlib/staged.py)
    "staged_loop", "pure", _staged_loop, "staged drafting: run the body, an inner speculative round over ctx ++ drafts[:count] "
    "(per row), until every row has max drafts; the body yields (tokens [B,N], their distributions [B,N,V], n [B]) and "
    "tokens[:, :n+1] with their distributions are appended to each row's drafts (cut at max)", has_region=True, region_rule=_drafting_body("staged_loop"))


def _logits_combine(p, ins):
    _expect(p.get("kind") in ("contrastive", "dola"), f"logits_combine kind must be \"contrastive\" or \"dola\", got {p.get('kind')!r}")
    _expect(len(ins) >= 2 and ins[0].dtype == "f32" and all(t == ins[0] for t in ins),
            f"logits_combine takes two or more logits of one type, got ({', '.join(map(str, ins))})")
    _expect(p["kind"] != "contrastive" or len(ins) == 2, "contrastive logits_combine takes (expert, amateur)")
    return [ins[0]]


OPS["logits_combine"] = OpDef(  # decoding that combines several distributions (stdlib/combine.py)
    "logits_combine", "pure", _logits_combine, "one distribution's scores from several models' (or layers') logits at the same "
    "positions: kind=\"contrastive\" (expert, amateur): log p_exp - log p_ama (form=\"difference\") or (1+beta) log p_exp - "
    "beta log p_ama (form=\"weighted\") where p_exp >= alpha max p_exp, -inf elsewhere (p_ama at temperature tau, default 1); kind=\"dola\" (final, premature "
    "layers...): per row, the premature layer most divergent from the final one, then log p_final - log p_premature where "
    "p_final >= relative_top max p_final, -inf elsewhere (stdlib/combine.py)")
