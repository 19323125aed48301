"""Table (n-gram) models: lookups, short-history padding, ragged rows, padding, rollback, trees, probs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decspec.stdlib.models import Cache, CacheFull, Model
from decspec.stdlib.models.table import TableModel

V = 6
SETTINGS = settings(derandomize=True, max_examples=30, deadline=None)


def expected(model: TableModel, seq: list[int]) -> torch.Tensor:
    """Logits after each prefix of seq, straight from the table. -> [T, V]"""
    return torch.stack([model.logits[model.context(seq[: i + 1])] for i in range(len(seq))])


def ancestors_mask(parents: list[int]) -> torch.Tensor:
    T = len(parents)
    m = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        j = i
        while j >= 0:
            m[i, j] = True
            j = parents[j]
    return m


def path_to(parents: list[int], i: int) -> list[int]:
    out = []
    while i >= 0:
        out.append(i)
        i = parents[i]
    return out[::-1]


orders = st.integers(0, 3)
seqs = st.lists(st.integers(0, V - 1), min_size=1, max_size=10)
trees = st.integers(1, 7).flatmap(lambda T: st.tuples(*[st.integers(-1, i - 1) for i in range(T)]).map(list))


def test_lookup_and_short_history():
    model = TableModel.random(vocab=V, order=2, seed=0)
    assert isinstance(model, Model) and isinstance(model.new_cache(1, 4), Cache)
    assert (model.order, model.vocab_size, model.num_layers, model.max_positions) == (2, V, None, None)
    out = model.forward(torch.tensor([[3, 5, 1]]), model.new_cache(1, 8)).logits[0]
    assert torch.equal(out[0], model.logits[0, 3])  # one missing token reads as 0
    assert torch.equal(out[1], model.logits[3, 5])
    assert torch.equal(out[2], model.logits[5, 1])


def test_unigram():
    logits = torch.randn(V)
    model = TableModel(logits, eos_token_id=2)
    assert model.order == 0 and model.eos_token_id == 2
    out = model.forward(torch.tensor([[1, 2], [3, 4]]), model.new_cache(2, 4)).logits
    assert out.shape == (2, 2, V) and torch.equal(out, logits.expand(2, 2, V))
    torch.testing.assert_close(model.probs([]), logits.softmax(-1))
    with pytest.raises(ValueError):
        TableModel(torch.zeros(3, 4))


@SETTINGS
@given(orders, seqs, st.lists(st.integers(1, 3), min_size=10, max_size=10))
def test_incremental_equals_table(order, seq, chunks):
    model = TableModel.random(V, order, seed=order)
    full = model.forward(torch.tensor([seq]), model.new_cache(1, 12)).logits[0]
    assert torch.equal(full, expected(model, seq))
    cache, got, i = model.new_cache(1, 12), [], 0
    for n in chunks:
        if i < len(seq):
            got.append(model.forward(torch.tensor([seq[i:i + n]]), cache).logits[0])
            i += n
    assert torch.equal(torch.cat(got), full)
    assert cache.tokens[0, : len(seq)].tolist() == seq


@SETTINGS
@given(orders, st.data())
def test_ragged_rows_n_valid_and_padding(order, data):
    model = TableModel.random(V, order, seed=7)
    B = 3
    prefix = [data.draw(st.lists(st.integers(0, V - 1), max_size=5)) for _ in range(B)]
    T = data.draw(st.integers(1, 4))
    block = [data.draw(st.lists(st.integers(0, V - 1), min_size=T, max_size=T)) for _ in range(B)]
    n_valid = [data.draw(st.integers(0, T)) for _ in range(B)]
    cache = model.new_cache(B, 12)
    P = max(len(p) for p in prefix)
    if P:
        model.forward(torch.tensor([p + [V - 1] * (P - len(p)) for p in prefix]), cache,
                      n_valid=torch.tensor([len(p) for p in prefix]))
    out = model.forward(torch.tensor(block), cache, n_valid=torch.tensor(n_valid)).logits
    last = model.forward(torch.tensor([[1]] * B), cache).logits
    for b in range(B):
        seq = prefix[b] + block[b][: n_valid[b]] + [1]
        want = expected(model, seq)
        k = len(prefix[b])
        assert torch.equal(out[b, : n_valid[b]], want[k:k + n_valid[b]])
        assert torch.equal(last[b, 0], want[-1])
    assert cache.length.tolist() == [len(p) + n + 1 for p, n in zip(prefix, n_valid)]


@SETTINGS
@given(orders, st.data())
def test_rollback_then_refeed(order, data):
    model = TableModel.random(V, order, seed=3)
    first = data.draw(st.lists(st.integers(0, V - 1), min_size=6, max_size=6))
    keep = data.draw(st.integers(0, 6))
    second = data.draw(st.lists(st.integers(0, V - 1), min_size=3, max_size=3))
    cache = model.new_cache(1, 10)
    model.forward(torch.tensor([first]), cache)
    cache.rollback(torch.tensor([keep]))
    out = model.forward(torch.tensor([second]), cache).logits[0]
    assert torch.equal(out, expected(model, first[:keep] + second)[keep:])


@SETTINGS
@given(orders, st.data())
def test_tree_equals_each_branch(order, data):
    model = TableModel.random(V, order, seed=11)
    B = 2
    parents = [data.draw(trees) for _ in range(B)]
    T = max(len(p) for p in parents)
    parents = [p + [-1] * (T - len(p)) for p in parents]
    prefix = [data.draw(st.lists(st.integers(0, V - 1), max_size=4)) for _ in range(B)]
    nodes = [data.draw(st.lists(st.integers(0, V - 1), min_size=T, max_size=T)) for _ in range(B)]
    cache = model.new_cache(B, 16)
    P = max(len(p) for p in prefix)
    if P:
        model.forward(torch.tensor([p + [0] * (P - len(p)) for p in prefix]), cache,
                      n_valid=torch.tensor([len(p) for p in prefix]))
    start = cache.length.clone()
    mask = torch.stack([ancestors_mask(p) for p in parents])
    out = model.forward(torch.tensor(nodes), cache, tree_mask=mask).logits
    for b in range(B):
        for i in range(T):
            seq = prefix[b] + [nodes[b][j] for j in path_to(parents[b], i)]
            assert torch.equal(out[b, i], model.logits[model.context(seq)])
    leaf = [data.draw(st.integers(0, T - 1)) for _ in range(B)]
    paths = [path_to(parents[b], leaf[b]) for b in range(B)]
    cache.commit_path(start, torch.tensor([p + [0] * (T - len(p)) for p in paths]), torch.tensor([len(p) for p in paths]))
    nxt = model.forward(torch.tensor([[2], [3]]), cache).logits
    for b in range(B):
        seq = prefix[b] + [nodes[b][j] for j in paths[b]] + [2 + b]
        assert cache.tokens[b, : len(seq)].tolist() == seq
        assert torch.equal(nxt[b, 0], model.logits[model.context(seq)])


def test_chain_tree_mask_equals_causal():
    model = TableModel.random(V, 2, seed=1)
    tokens = torch.tensor([[1, 2, 3, 4]])
    chain = torch.ones(1, 4, 4, dtype=torch.bool).tril()
    a = model.forward(tokens, model.new_cache(1, 4)).logits
    b = model.forward(tokens, model.new_cache(1, 4), tree_mask=chain).logits
    assert torch.equal(a, b)


def test_probs():
    model = TableModel.random(V, 2, seed=5, temperature=0.5)
    p = model.probs([4, 1, 2])
    torch.testing.assert_close(p, model.logits[1, 2].softmax(-1))
    torch.testing.assert_close(p.sum(), torch.tensor(1.0))
    torch.testing.assert_close(model.probs([3]), model.logits[0, 3].softmax(-1))  # short history: 0-padded
    torch.testing.assert_close(model.probs([]), model.logits[0, 0].softmax(-1))
    hot = TableModel.random(V, 2, seed=5, temperature=0.1)
    assert hot.probs([1, 2]).max() > p.max()  # lower temperature: sharper
    assert TableModel.random(V, 1, seed=5, dtype=torch.float64).logits.dtype == torch.float64


def test_errors():
    model = TableModel.random(V, 1, seed=0)
    cache = model.new_cache(1, 4)
    model.forward(torch.tensor([[1, 2, 3]]), cache)
    with pytest.raises(CacheFull):
        model.forward(torch.tensor([[1, 2]]), cache)
    assert cache.length.tolist() == [3]
    with pytest.raises(ValueError):
        model.forward(torch.tensor([[1]]), cache, exit_layer=1)
