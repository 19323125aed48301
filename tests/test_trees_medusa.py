"""Medusa's tree of candidates: `heads(target, kind = "medusa", tree = [3, 2])`.

Head d gives one distribution for every node at depth d + 1; each node gets tree[d] children from
it, verified over the tree by `multi_rejection` or `greedy`. Which combinations are lossless, and
tested so here:

- children drawn i.i.d. from head d's q (a sampling pipeline), or without replacement
  (`replacement = false`), each with the q it was drawn from, and `multi_rejection`: exactly lossless;
- the top tree[d] children (a greedy pipeline, or `topk = true` at any temperature) with q one-hot
  on each, and `multi_rejection`: exactly lossless (a rejection removes the child from r: sampling r
  by elimination); at temperature 0 this is greedy decoding, token for token;
- any tree with `greedy`: the target's own sample at every node, exactly lossless;
- the top-k children verified with the *head's* q (what one gets by handing rejection the
  distribution the candidates were ranked by): not lossless, and the exact check says so.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import decspec
from decspec.api import Decoder
from decspec.compiler.ir import Op, Type, Value
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.layered_table import LayeredTableModel
from decspec.stdlib.models.transformer import Transformer, TransformerConfig
from decspec.testing import assert_greedy_equivalent, assert_lossless, exact_distribution, target_distribution, tv_distance

ROOT = Path(__file__).resolve().parents[1]
MEDUSA_TREE = ROOT / "specs" / "medusa_tree.dec"


def text(tree, sampler: str = "temperature(1.0)", verify: str = "multi_rejection", extra: str = "", kind: str = "medusa") -> str:
    return (f'decoder d() {{\n    target  = model("target")\n    sampler = {sampler}\n'
            f'    propose = heads(target, kind = "{kind}", tree = {list(tree)}{extra})\n    verify  = {verify}\n}}\n')


def table(V: int = 4, order: int = 1, seed: int = 22) -> LayeredTableModel:
    return LayeredTableModel.random(V, order, seed=seed)


def with_heads(model: Transformer, n: int = 4, seed: int = 0, scale: float = 0.3) -> Transformer:
    """Random (untrained) Medusa heads on a transformer."""
    from decspec.stdlib.models.heads import MedusaHeads

    gen = torch.Generator().manual_seed(seed)
    model.heads = {"medusa": MedusaHeads(model.config.hidden_size, n)}
    model.heads["medusa"].requires_grad_(False)
    for p in model.heads["medusa"].parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * scale) if p.dim() > 1 else p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


# --------------------------------------------------------------------------- lossless, exactly


@pytest.mark.parametrize("tree", [(2, 1), (3,), (1, 2)])
@pytest.mark.parametrize("order, prompt, temperature", [(0, [1], 1.0), (1, [0, 2], 0.7), (1, [3], 1.0)])
def test_sampled_tree_with_multi_rejection_is_exactly_lossless(tree, order, prompt, temperature):
    dec = decspec.compile(MEDUSA_TREE, target=table(4, order, 21 + order), temperature=temperature, widths=list(tree))
    assert "tree_topk" not in [op.name for op in dec.graph.ops]  # i.i.d. children at temperature > 0
    assert assert_lossless(dec, prompt=prompt, max_new_tokens=3, method="exact").method == "exact"


@pytest.mark.parametrize("extra", [", replacement = false", ", topk = true"])
@pytest.mark.parametrize("sampler", ["temperature(1.0)", "top_k(3) | temperature(0.8)"])
def test_without_replacement_and_topk_trees_are_exactly_lossless(extra, sampler):
    assert_lossless(text((2, 2), sampler, extra=extra), models={"target": table()}, prompt=[1], max_new_tokens=3, method="exact")


def test_greedy_verification_of_a_sampled_head_tree_is_lossless():
    assert_lossless(text((2,), verify="greedy"), models={"target": table()}, prompt=[2], max_new_tokens=3, method="exact")


def test_topk_children_verified_with_the_heads_q_are_not_lossless():
    """The check can fail: the top-k candidates handed to rejection with the head's distribution
    (the one they were ranked by) instead of the one-hot q they were (deterministically) drawn from."""
    dec = decspec.compile(text((2, 1), extra=", topk = true"), target=table())
    ops, swapped = [], {}
    for op in dec.graph.ops:
        if op.name == "tree_topk":  # q_rep = the head's q repeated over each node's k children
            (q,) = op.inputs
            rep = Value(Type("f32", ("B", op.outputs[1].type.shape[1], "V")))
            ops += [op, Op("repeat", (q,), (rep,), (("times", op.param("k")),), meta=op.meta)]
            swapped[op.outputs[1]] = rep
            continue
        ops.append(op.replace(inputs=tuple(swapped.get(v, v) for v in op.inputs)) if op.name == "tree_build" else op)
    wrong = Decoder(dec.spec, dec.graph.replace(ops=tuple(ops)), dec.models, "eager")
    with pytest.raises(AssertionError, match="is not lossless"):
        assert_lossless(wrong, prompt=[1], max_new_tokens=3, method="exact")
    assert tv_distance(exact_distribution(wrong, [1], 3), target_distribution(wrong, [1], 3)) > 0.01
    assert_lossless(dec, prompt=[1], max_new_tokens=3, method="exact")  # the same tree with one-hot q is


def test_statistically_lossless_on_a_tiny_transformer():
    """The transformer's KV cache and hidden states through the tree call and the path commit."""
    config = TransformerConfig(vocab_size=5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    target = with_heads(Transformer.random(config, 0))
    assert_lossless(text((2, 1)), models={"target": target}, prompt=[1, 2], max_new_tokens=2, method="statistical", samples=3000)


# --------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("tree", [[3, 2], [2, 2, 1], [4]])
def test_medusa_tree_at_temperature_0_is_greedy_decoding_on_tables(tree):
    assert_greedy_equivalent(MEDUSA_TREE, models={"target": table(5, 1, 3)}, prompts=[[1], [2, 3, 4]], max_new_tokens=10, widths=tree)
    assert_greedy_equivalent(text(tree, "greedy", "greedy"), models={"target": table(5, 1, 3)}, prompts=[[1], [2, 3]], max_new_tokens=10)


def test_medusa_tree_at_temperature_0_is_greedy_decoding_on_a_transformer():
    """Reads h at L-2 after every tree verification: the accepted path's hidden states must have moved with its K/V."""
    config = TransformerConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    target = with_heads(Transformer.random(config, 1), seed=2)
    assert_greedy_equivalent(MEDUSA_TREE, models={"target": target}, prompts=[[1, 2, 3], [7]], max_new_tokens=16, exact=False)


@pytest.mark.parametrize("kind", ["transformer", "table"])
def test_hidden_after_a_tree_call_is_the_accepted_paths(kind):
    """After a tree verification, h at L-2 (what the heads read next round) equals a fresh forward's:
    the transformer's path hidden states move with its K/V; the table model's block is re-fed."""
    from decspec.backends.prefix import PrefixCache
    from decspec.backends.tree_cache import tree_logits
    from decspec.compiler.ops_tree import tree_parents

    if kind == "transformer":
        config = TransformerConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
        model = Transformer.random(config, 3)
    else:
        model = table(5, 2, 7)
    parents = tree_parents((2, 2))  # nodes 0, 1; 2, 3 under 0; 4, 5 under 1
    tokens = torch.tensor([[1, 2, 3, 4, 0, 1], [4, 3, 2, 1, 0, 4]])
    ctx = torch.zeros(2, 32, dtype=torch.long)
    ctx[0, :4], ctx[1, :2] = torch.tensor([1, 2, 3, 4]), torch.tensor([3, 1])
    length = torch.tensor([4, 2])
    pc = PrefixCache(model, 2, 32)
    pc.hidden(ctx, length)  # turns recording on, as the heads' first round does
    tree_logits(pc, ctx, length, tokens, parents)
    ctx[0, 4:7] = torch.tensor([2, 1, 3])  # row 0: node 1 -> node 4, then a new token
    ctx[1, 2:4] = torch.tensor([4, 2])  # row 1: node 0, then a new token
    length = torch.tensor([7, 4])
    got = pc.hidden(ctx, length)
    fresh = PrefixCache(model, 2, 32).hidden(ctx, length)
    assert torch.allclose(got, fresh, atol=1e-5)
    assert pc.cache.tokens[0, :6].tolist() == [1, 2, 3, 4, 2, 1]


def test_the_ir_draws_each_level_from_its_head():
    dec = decspec.compile(MEDUSA_TREE, target=table(), temperature=1.0, widths=[3, 2])
    levels = [op for op in dec.graph.ops if op.name == "head_level"]
    assert [op.param("depth") for op in levels] == [0, 1]
    assert [op.name for op in dec.graph.ops].count("tree_call") == 1  # the target only: no draft model call
    greedy = decspec.compile(MEDUSA_TREE, target=table(), widths=[3, 2])
    assert [op.param("k") for op in greedy.graph.ops if op.name == "tree_topk"] == [3, 2]
    names = [op.name for op in greedy.graph.ops]
    assert "uniform" not in names[: names.index("tree_build")]  # deterministic candidates: the draft draws nothing


def test_medusa_tree_accepts_more_than_the_medusa_chain_on_tables():
    target = table(6, 1, 5)
    prompts = [[i] for i in range(6)]
    chain = decspec.compile(ROOT / "specs" / "medusa.dec", target=target, k=2).generate(prompts, max_new_tokens=20, seed=0)
    tree = decspec.compile(MEDUSA_TREE, target=target, widths=[3, 2]).generate(prompts, max_new_tokens=20, seed=0)
    assert tree.tokens == chain.tokens  # both greedy decoding
    assert tree.stats.mean_accepted >= chain.stats.mean_accepted


# --------------------------------------------------------------------------- errors


def test_a_hydra_tree_is_not_yet():
    with pytest.raises(DecError, match='only Medusa heads draft a tree yet') as info:
        decspec.compile(text((2,), kind="hydra"), target=table())
    assert info.value.diagnostics[0].span.line == 4


def test_a_tree_deeper_than_the_heads():
    with pytest.raises(DecError, match=r"drafts a tree 5 deep, but model 'target' has 4 medusa heads"):
        decspec.compile(text((1, 1, 1, 1, 1)), target=table())._bound_models()


def test_tree_options_on_a_chain_say_to_give_the_tree():
    source = 'decoder d() {\n    target = model("target")\n    propose = heads(target, max = 2, topk = true)\n    verify = rejection\n}\n'
    with pytest.raises(DecError, match="shapes the children of a token tree") as info:
        decspec.compile(source, target=table())
    assert info.value.diagnostics[0].span.line == 3


def test_a_chain_verifier_refuses_the_head_tree():
    with pytest.raises(DecError, match="verifier 'rejection' cannot verify a token tree"):
        decspec.compile(text((2,), verify="rejection"), target=table())


def test_mlir_and_inductor_refuse_the_head_tree_naming_an_op():
    from decspec.backends.mlir.export import check_exportable

    dec = decspec.compile(MEDUSA_TREE, target=table())
    check_exportable(dec.graph, "round")  # the kept hidden states are an input and an output of the round
    with pytest.raises(DecError, match=r"cannot export op 'model_hidden' \(spec line 13.*as part 'verify'"):
        check_exportable(dec.graph, "verify")


def test_the_inductor_round_runs_the_head_tree_with_the_eager_acceptances():
    """Medusa head trees on the inductor backend: after the tree verification the target's kept hidden states of the
    accepted path move to the path's positions (static.py keep_path), so the next round's heads read the last
    accepted token's, as eager's do: the same tokens and the same acceptances (without the move, greedy tokens would
    still agree but the heads would read a wrong hidden state and accept less)."""
    from decspec.stdlib.models.pretrained import reference_models

    target = reference_models()["target"]
    prompts = ["def add(a, b):", "class Stack:", "import os\n"]
    eager = decspec.compile(MEDUSA_TREE, target=target).generate(prompts, max_new_tokens=24)
    emitted = decspec.compile(MEDUSA_TREE, target=target, backend="inductor").generate(prompts, max_new_tokens=24)
    assert emitted.tokens == eager.tokens and emitted.stats.accepted == eager.stats.accepted
    assert eager.stats.mean_accepted > 1
