"""Staged drafting: `staged(draft, inner = <draft source>, max = k)`.

The draft's k tokens come from inner speculative rounds against the first-stage draft; the decoder is
exactly lossless on table models with a lookup or a model as the inner draft; every round drafts k
tokens with fewer draft calls than k; the exact check catches a wrong q; bad nesting is a diagnostic;
the inductor backend gives eager's tokens for the same seed (greedy and sampled; with an inner exit condition,
greedy, and sampled checked statistically) in one compiled graph, and refuses a grammar inside the inner round
naming the op and its .dec line.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import decspec
from decspec.backends.eager import staged as staged_rules
from decspec.backends.runtime import Context
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.layered_table import LayeredTableModel
from decspec.testing import assert_greedy_equivalent, assert_lossless, exact_distribution, target_distribution, tv_distance

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "staged.dec"


def tables(V: int, order: int, seed: int = 0) -> dict:
    return {"target": LayeredTableModel.random(V, order, seed), "draft": LayeredTableModel.random(V, order, seed + 1, temperature=2.0)}


def inline(propose: str, extra: str = "") -> str:
    return (f'decoder d(t: float = 1.0) {{\n    target  = model("target")\n    draft   = model("draft")\n    sampler = temperature(t)\n'
            f'    propose = {propose}\n{extra}    verify  = rejection\n}}\n')


# --------------------------------------------------------------------------- the loop


def test_the_context_is_extended_by_each_rows_drafts():
    ctx = Context(torch.tensor([[1, 2, 0, 0, 0], [3, 0, 0, 0, 0]]), torch.tensor([2, 1]), torch.tensor([1, 1]))
    out = staged_rules.extended(ctx, torch.tensor([[7, 8], [9, 6]]), torch.tensor([1, 2]))
    assert out.length.tolist() == [3, 3] and out.start.tolist() == [1, 1]
    assert out.tokens[0, :3].tolist() == [1, 2, 7] and out.tokens[1, :3].tolist() == [3, 9, 6]
    assert ctx.tokens[0, 2] == 0  # the committed context is left alone


def test_every_round_drafts_k_tokens_with_fewer_draft_calls():
    """A repetitive prompt: lookup finds the continuation, one draft call scores several tokens."""
    models = random_models(seed=1)
    dec = decspec.compile(SPEC, models=models, k=8, inner=4, temperature=0.0)
    prompt = [5, 6, 7, 8, 9] * 6
    out = dec.generate([prompt], max_new_tokens=24, seed=0)
    assert all(d == 8 for row in out.stats.drafted for d in row)
    assert out.stats.model_calls["draft"] < 8 * out.stats.rounds
    plain = decspec.compile(ROOT / "specs" / "speculative.dec", models=models, k=8, temperature=0.0).generate([prompt], max_new_tokens=24, seed=0)
    assert out.tokens == plain.tokens  # greedy: the same drafts, so the same rounds
    assert out.stats.accepted == plain.stats.accepted


# --------------------------------------------------------------------------- losslessness


@pytest.mark.parametrize("V, order, prompt, t", [(3, 1, [0, 2, 0], 1.0), (2, 0, [1, 0, 1], 0.7), (3, 1, [2], 1.3)])
def test_exactly_lossless_with_a_lookup_inner_draft(V, order, prompt, t):
    dec = decspec.compile(SPEC, models=tables(V, order), k=3, inner=2, temperature=t, top_p=1.0)
    got = exact_distribution(dec, prompt, 3)
    assert tv_distance(got, target_distribution(dec, prompt, 3)) <= max(1e-12, got.error_bound)


def test_exactly_lossless_with_a_model_inner_draft_and_an_exit_condition():
    src = inline("staged(draft, inner = autoregressive(early_exit(target, layer = 1), max = 2), max = 3)", "    stop    = when draft.prob < 0.5\n")
    dec = decspec.compile(src, models=tables(2, 1, seed=3), t=0.9)
    got = exact_distribution(dec, [1], 3)
    assert tv_distance(got, target_distribution(dec, [1], 3)) <= max(1e-12, got.error_bound)


def test_the_exact_check_catches_a_wrong_q(monkeypatch):
    """Handing the verifier a stale q (the first position's distribution at every position) instead of the draft's
    own distribution at each is not lossless: the exact check must say so. (A one-hot q on the drafts would be:
    rejection against a one-hot q is lossless for drafts from any source, as lookup's are.)"""
    real = staged_rules.staged_loop

    def stale_q(state, op, ctx):
        drafts, probs, count = real(state, op, ctx)
        return drafts, probs[:, :1].expand_as(probs).clone(), count

    import decspec.backends.exact.rules as exact_rules

    monkeypatch.setitem(decspec.backends.exact.RULES, "staged_loop", exact_rules.exact(stale_q, "staged_loop"))
    dec = decspec.compile(SPEC, models=tables(3, 1), k=2, inner=2, temperature=1.0, top_p=1.0)
    got = exact_distribution(dec, [0, 2, 0], 3)
    assert tv_distance(got, target_distribution(dec, [0, 2, 0], 3)) > 1e-3


def test_greedy_is_greedy_decoding():
    assert_greedy_equivalent(SPEC, models=random_models(seed=2), prompts=[[1, 2, 1, 2], [3], [4, 5, 4]], max_new_tokens=12,
                             temperature=0.0, exact=False)


# --------------------------------------------------------------------------- diagnostics


@pytest.mark.parametrize("propose, message", [
    ("staged(draft, inner = staged(draft, inner = lookup()))", "inner draft source must be lookup or autoregressive, found 'staged'"),
    ("staged(draft, inner = tree(draft))", "inner draft source must be lookup or autoregressive, found 'tree'"),
    ("staged(draft, inner = heads(target))", "inner draft source must be lookup or autoregressive, found 'heads'"),
])
def test_bad_nesting_is_a_diagnostic(propose, message):
    with pytest.raises(DecError, match=message) as info:
        decspec.compile(inline(propose), models=tables(3, 1))
    assert "5:" in str(info.value)  # the propose line


def test_a_model_as_the_inner_draft_is_a_diagnostic():
    with pytest.raises(DecError, match="'model' is a model, but a draft source is expected here"):
        decspec.compile(inline("staged(draft, inner = draft)"), models=tables(3, 1))


def test_stop_on_a_lookup_inner_draft_is_a_diagnostic():
    with pytest.raises(DecError, match="`stop` reads the draft model's statistics, but `lookup` drafts without a model"):
        decspec.compile(inline("staged(draft, inner = lookup())", "    stop    = when draft.prob < 0.5\n"), models=tables(3, 1))


# --------------------------------------------------------------------------- the inductor backend

REPEATS = [[5, 6, 7, 8, 9] * 6, [1, 2, 1, 2, 1, 2, 1, 2], [4]]  # lookup finds continuations: rows fill up in fewer inner rounds


def both(models, prompts, new_tokens, seed, **overrides):
    """(eager, inductor) outputs of specs/staged.dec for the same prompts and seed."""
    return tuple(decspec.compile(SPEC, models=models, backend=b, **overrides).generate(prompts, max_new_tokens=new_tokens, seed=seed)
                 for b in ("eager", "inductor"))


@pytest.mark.parametrize("k, inner", [(4, 2), (3, 3), (1, 2), (2, 4)])
def test_inductor_greedy_equals_eager(k, inner):
    eager, gen = both(random_models(seed=1), REPEATS, 20, 0, k=k, inner=inner, temperature=0.0)
    assert gen.tokens == eager.tokens and gen.stats.accepted == eager.stats.accepted
    assert eager.stats.model_calls["draft"] < k * eager.stats.rounds or k == 1  # eager skipped inner rounds: the masks were used


@pytest.mark.parametrize("t, k, inner, rows", [(0.2, 4, 2, 1), (0.8, 3, 2, 3), (1.0, 2, 3, 3)])
def test_inductor_sampled_equals_eager_for_the_same_seed(t, k, inner, rows):
    """The generated round runs all k inner rounds; eager stops once every row is full but still takes the skipped
    rounds' draws (staged.skip_draws), so both consume the random stream alike and give the same tokens."""
    eager, gen = both(random_models(seed=1), REPEATS[:rows], 24, 3, k=k, inner=inner, temperature=t)
    assert gen.tokens == eager.tokens and gen.stats.accepted == eager.stats.accepted
    if rows == 1:
        assert eager.stats.model_calls["draft"] < k * eager.stats.rounds  # eager skipped inner rounds (and took their draws)


def test_inductor_sampled_equals_eager_on_table_models():
    """The models the exact check runs on (tests above): the same tokens as eager, whose distribution is exact."""
    eager, gen = both(tables(3, 1), [[0, 2, 0, 2, 0], [1], [2, 2]], 12, 5, k=3, inner=2, temperature=1.0, top_p=1.0)
    assert gen.tokens == eager.tokens and gen.stats.accepted == eager.stats.accepted


def test_inductor_runs_every_inner_round():
    """Static shapes: every round makes k draft calls (the rows already full are masked), and counts them."""
    eager, gen = both(random_models(seed=1), REPEATS, 16, 0, k=4, inner=2, temperature=0.0)
    assert gen.stats.model_calls["draft"] == 4 * gen.stats.rounds + 1  # + the prefill
    assert eager.stats.model_calls["draft"] < 4 * eager.stats.rounds


MODEL_INNER = inline("staged(draft, inner = autoregressive(early_exit(target, layer = 1), max = 2), max = 3)")
STOP = "    stop    = when draft.prob < 0.5\n"


@pytest.mark.parametrize("source", [SPEC, MODEL_INNER], ids=["lookup", "model"])
def test_a_compiled_staged_round_is_one_graph(source):
    """torch.compile (through dynamo's eager backend: the same graphs and breaks, without inductor's compile time):
    one graph, no graph break, no recompile for other prompt lengths and another seed; eager's tokens."""
    from torch._dynamo.utils import counters

    models = random_models(seed=1)
    others = [[3, 4, 3, 4, 3], [9] * 12, [7, 8]]
    torch._dynamo.reset()
    counters.clear()
    dec = decspec.compile(source, models=models, backend="inductor", **({"temperature": 0.3} if source == SPEC else {"t": 0.3}))
    dec.backend_options = {"compile": True, "dynamo_backend": "eager"}
    eager = decspec.compile(source, models=models, **({"temperature": 0.3} if source == SPEC else {"t": 0.3}))
    assert dec.generate(REPEATS, max_new_tokens=16, seed=0).tokens == eager.generate(REPEATS, max_new_tokens=16, seed=0).tokens
    assert counters["stats"]["unique_graphs"] == 1
    assert dec.generate(others, max_new_tokens=20, seed=1).tokens == eager.generate(others, max_new_tokens=20, seed=1).tokens
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


@pytest.mark.parametrize("t", [0.0, 0.7])
@pytest.mark.parametrize("models, prompts", [(tables(3, 1), [[0, 2, 0, 2, 0], [1], [2, 2]]), (random_models(seed=1), REPEATS)],
                         ids=["tables", "transformers"])
def test_inductor_with_a_model_as_the_inner_draft_equals_eager(models, prompts, t):
    """An inner draft loop in every inner round (its model re-feeds the context's last two tokens: it never feeds its
    own last draft): eager's tokens for the same seed."""
    eager, gen = (decspec.compile(MODEL_INNER, models=models, backend=b, t=t).generate(prompts, max_new_tokens=16, seed=2)
                  for b in ("eager", "inductor"))
    assert gen.tokens == eager.tokens and gen.stats.accepted == eager.stats.accepted
    assert gen.stats.model_calls["target/exit1"] == 3 * 2 * gen.stats.rounds + 1  # 3 inner rounds of 2 steps, + the prefill


def test_inductor_with_an_inner_exit_condition():
    """With `stop` on the inner draft, eager's inner loop ends once every row's exit fired and skips the later steps'
    draws (as any exit policy does), so sampled tokens differ from eager's for a seed: greedy tokens are eager's, and
    sampling passes the statistical check against the target (which a stale q fails: test below)."""
    src = inline("staged(draft, inner = autoregressive(early_exit(target, layer = 1), max = 2), max = 3)", STOP)
    eager, gen = (decspec.compile(src, models=random_models(seed=1), backend=b, t=0.0).generate(REPEATS, max_new_tokens=16, seed=2)
                  for b in ("eager", "inductor"))
    assert gen.tokens == eager.tokens
    dec = decspec.compile(src, models=tables(2, 1, seed=3), t=0.9, backend="inductor")
    assert_lossless(dec, prompt=[1], max_new_tokens=3, method="statistical")


def test_the_statistical_check_catches_a_stale_q_on_inductor(monkeypatch):
    from decspec.backends.inductor import kernels

    real = kernels.staged_append
    monkeypatch.setattr(kernels, "staged_append", lambda d, probs, c, tok, p, n: real(d, probs, c, tok, p[:, :1].expand_as(p), n))
    src = inline("staged(draft, inner = autoregressive(early_exit(target, layer = 1), max = 2), max = 3)", STOP)
    dec = decspec.compile(src, models=tables(2, 1, seed=3), t=0.9, backend="inductor")
    with pytest.raises(AssertionError, match="does not sample from the target"):
        assert_lossless(dec, prompt=[1], max_new_tokens=3, method="statistical")


def test_the_inductor_backend_refuses_a_grammar_in_the_inner_round_naming_the_op_and_line():
    from decspec.backends.inductor import emit_python
    from decspec.compiler.lower import lower
    from decspec.compiler.passes import run_pipeline
    from decspec.dsl.check import load

    src = inline("staged(draft, inner = lookup(max = 2), max = 3)", '    grammar = regex("""(ab|cd)+""")\n')
    with pytest.raises(DecError, match=r"cannot emit op 'grammar_state' in staged drafting's inner round yet \(from spec line 5\)"):
        emit_python(run_pipeline(lower(load(src))))
