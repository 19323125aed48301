"""Staged drafting: `staged(draft, inner = <draft source>, max = k)`.

The draft's k tokens come from inner speculative rounds against the first-stage draft; the decoder is
exactly lossless on table models with a lookup or a model as the inner draft; every round drafts k
tokens with fewer draft calls than k; the exact check catches a wrong q; bad nesting is a diagnostic;
the compiled backends refuse the op naming it and its .dec line.
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
from decspec.testing import assert_greedy_equivalent, exact_distribution, target_distribution, tv_distance

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


def test_the_compiled_backend_refuses_naming_the_op_and_line():
    dec = decspec.compile(SPEC, models=random_models(seed=1), backend="inductor")
    with pytest.raises(DecError, match=r"cannot emit op 'staged_loop' yet \(from spec line 12\)"):
        dec.generate([[1, 2]], max_new_tokens=4, seed=0)
