"""Concurrent generate calls on one Decoder never mix: each thread, started together with the others,
gets the tokens the same call gives alone, on every backend and for specs whose state spans rounds
(token recycling's matrix, a bandit's arms), token trees, beam search and a grammar discovered while
decoding. An unseeded call leaves torch's global generator alone."""
from __future__ import annotations

import threading

import pytest
import torch

import decspec
from decspec.stdlib.grammars.cache import CACHE
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.table import TableModel

THREADS = 4
PROMPTS = [[[1, 2, 3]], [[4, 5, 6, 7, 8], [9]], [[10]], [[11, 12, 13, 14, 15, 16, 17]]]  # per thread: a batch (ragged)
BACKENDS = ["eager", "exact", "inductor"]
SPECS = {  # name: (spec, overrides, backends)
    "speculative": ("specs/speculative.dec", {"k": 3}, BACKENDS),
    "tree": ("specs/specinfer_tree.dec", {}, ["eager", "exact"]),  # the inductor backend emits no token trees yet
    "recycling": ("specs/token_recycling.dec", {"k": 3, "temperature": 1.0}, BACKENDS),
    "bandit": ("specs/bandit.dec", {"algorithm": "exp3"}, BACKENDS),
}


@pytest.fixture(scope="module")
def models():
    return random_models(seed=3)


def concurrently(call, n: int = THREADS) -> list:
    """call(i) in n threads released together by a barrier -> their results, in thread order (errors re-raised)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = call(i)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def assert_threads_equal_sequential(dec, max_new_tokens: int = 12, prompts=PROMPTS) -> None:
    call = lambda i: dec.generate(prompts[i], max_new_tokens=max_new_tokens, seed=100 + i)  # noqa: E731
    alone = [call(i) for i in range(THREADS)]
    together = concurrently(call)
    for i, (a, b) in enumerate(zip(alone, together)):
        assert b.tokens == a.tokens, f"thread {i}"
        assert b.stats.accepted == a.stats.accepted, f"thread {i}"
    assert len({tuple(map(tuple, a.tokens)) for a in alone}) == THREADS  # the threads' outputs differ: mixing would show


@pytest.mark.parametrize("name, backend", [(name, b) for name, (_, _, backends) in SPECS.items() for b in backends])
def test_threads_get_their_sequential_tokens(models, name, backend):
    path, overrides, _ = SPECS[name]
    assert_threads_equal_sequential(decspec.compile(path, models=models, backend=backend, overrides=overrides))


def test_compiled_inductor_round_threads(models):
    """torch.compile'd rounds keep static buffers: the Decoder serializes their calls. (One small graph, one
    batch size: a single compilation, about 20 s on two CPU cores.)"""
    dec = decspec.compile("specs/autoregressive.dec", models=models, backend="inductor")
    dec.backend_options = {"compile": True}
    assert_threads_equal_sequential(dec, max_new_tokens=6, prompts=[p[:1] for p in PROMPTS])


def test_beam_search_threads(models):
    assert_threads_equal_sequential(decspec.compile("specs/beam_search.dec", models=models, width=2))


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_a_grammar_discovered_while_threads_decode(backend):
    """A Lark grammar's matcher discovers states as decoding goes and is shared (one per grammar and vocabulary):
    the threads discover it together from an empty cache."""
    vocab = [b"a", b"{", b"}", b"{a", b"a}", b"}{", None]
    v = len(vocab)
    models = {"target": TableModel.random(v, 1, 5, eos_token_id=v - 1), "draft": TableModel.random(v, 1, 6, eos_token_id=v - 1)}
    spec = ('decoder d(k: int = 2) {\n    target = model("target")\n    draft = model("draft")\n'
            '    sampler = temperature(1.5)\n    grammar = lark("""start: "{" start* "}" | "a" """)\n'
            '    propose = autoregressive(draft, max = k)\n    verify = rejection\n}\n')
    make = lambda: decspec.compile(spec, models=models, vocab=vocab, backend=backend)  # noqa: E731
    dec = make()
    holder = {}

    def fresh():  # a new matcher, discovered from its start state by the threads
        CACHE.clear()
        holder["dec"] = make()

    call = lambda i: holder.get("dec", dec).generate([[1]] * (i + 1), max_new_tokens=16, seed=i)  # noqa: E731
    alone = [call(i) for i in range(THREADS)]
    fresh()
    assert holder["dec"].matcher is not dec.matcher
    together = concurrently(call)
    assert [r.tokens for r in together] == [r.tokens for r in alone]


def test_unseeded_generate_leaves_the_global_generator_alone(models):
    dec = decspec.compile("specs/speculative.dec", models=models, k=2)
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    dec.generate([[1, 2]], max_new_tokens=4)
    assert torch.equal(torch.rand(4), expected)


def test_unseeded_calls_of_a_seeded_policy():
    """An unseeded call draws a fresh 64-bit seed; an EXP3 bandit keeps it in an int64 tensor (any 64 bits fit)."""
    m = {"target": TableModel.random(6, 1, 0), "draft": TableModel.random(6, 1, 1)}
    dec = decspec.compile("specs/bandit.dec", models=m, algorithm="exp3")
    for _ in range(8):
        dec.generate([[1]], max_new_tokens=4)
    assert dec.generate([[1]], max_new_tokens=8, seed=2**64 - 1).tokens == dec.generate([[1]], max_new_tokens=8, seed=-1).tokens


@pytest.mark.parametrize("seed", [2**64, -2**63 - 1, 1.5, True, "0"])
def test_a_bad_seed_is_refused(seed):
    dec = decspec.compile("specs/bandit.dec", models={"target": TableModel.random(6, 1, 0), "draft": TableModel.random(6, 1, 1)})
    with pytest.raises(decspec.DecError, match="seed must be an integer"):
        dec.generate([[1]], max_new_tokens=2, seed=seed)
