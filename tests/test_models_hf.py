"""The Hugging Face adapter: same semantics as the built-in Transformer on the same weights, ragged
rows over one physical HF cache, independent rollback, trees, loading errors, and end to end."""
from __future__ import annotations

import doctest
import importlib.util
import random
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import decspec  # noqa: E402
from decspec.dsl.diagnostics import DecError  # noqa: E402
from decspec.stdlib.models import Cache, CacheFull, Model  # noqa: E402
from decspec.stdlib.models import hf as hf_module  # noqa: E402
from decspec.stdlib.models.hf import HFCache, HFModel  # noqa: E402
from decspec.stdlib.models.transformer import Transformer, TransformerConfig  # noqa: E402
from test_models_table import ancestors_mask, path_to  # noqa: E402  (tree helpers shared with the table tests)

V = 64
ATOL = 1e-5
TINY = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rope_theta=500000.0, initializer_range=0.2)


def llama(seed: int, **kw) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY, **kw})).eval()


HF = llama(0)
MODEL = HFModel(HF)


def builtin(hf: transformers.PreTrainedModel) -> Transformer:
    """decspec's own Llama with the HF model's config and weights."""
    model = Transformer(TransformerConfig.from_dict(hf.config.to_dict()))
    model.load_state_dict(hf.state_dict())
    return model


BUILTIN = builtin(HF)


@torch.no_grad()
def full(tokens: list[int], hf=HF) -> torch.Tensor:
    """Plain HF forward of one whole sequence, no cache. -> logits [T, V]"""
    return hf(torch.tensor([tokens])).logits[0].float()


def test_protocol_and_attributes():
    assert isinstance(MODEL, Model)
    assert (MODEL.vocab_size, MODEL.eos_token_id, MODEL.max_positions, MODEL.num_layers) == (V, 2, 128, 2)
    assert MODEL.tokenizer is None and MODEL.hf_model is HF
    assert MODEL.dtype == torch.float32 and MODEL.device == torch.device("cpu")
    cache = MODEL.new_cache(2, 16)
    assert isinstance(cache, HFCache) and isinstance(cache, Cache)
    assert cache.tokens.shape == (2, 16) and cache.length.tolist() == [0, 0]
    assert BUILTIN.config.rope_theta == 500000.0  # TransformerConfig.from_dict reads transformers 5's rope_parameters


def test_doctests():
    assert doctest.testmod(hf_module, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def test_import_needs_no_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    spec = importlib.util.spec_from_file_location("hf_without_transformers", hf_module.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the module itself imports fine
    for build in (lambda: module.HFModel(HF), lambda: module.HFModel.from_pretrained("x"), lambda: module.HFCache(1, 4)):
        with pytest.raises(DecError, match=r"pip install 'decspec\[hf\]'"):
            build()


def test_prefill_and_steps_equal_full_forward():
    tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    cache, got, i = MODEL.new_cache(1, 16), [], 0
    for n in (4, 1, 2, 1, 3):
        out = MODEL.forward(torch.tensor([tokens[i:i + n]]), cache)
        got.append(out.logits[0])
        i += n
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(torch.cat(got), full(tokens), atol=ATOL, rtol=0)
    assert cache.length.tolist() == [len(tokens)] and cache.tokens[0, : len(tokens)].tolist() == tokens
    whole = MODEL.forward(torch.tensor([tokens]), MODEL.new_cache(1, 16))
    with torch.no_grad():
        ref = HF(torch.tensor([tokens]), output_hidden_states=True)
    torch.testing.assert_close(whole.hidden, ref.hidden_states[-1], atol=ATOL, rtol=0)  # after the final norm
    torch.testing.assert_close(whole.hidden @ HF.lm_head.weight.T, whole.logits, atol=ATOL, rtol=0)


def test_ragged_rows_and_padding():
    prefix = [[7, 8, 9, 10, 11], [12, 13], []]
    block, n_valid, nxt = [[1, 2, 3], [4, 5, 6], [7, 8, 9]], [2, 3, 0], [20, 21, 22]
    results = []
    for pad in (0, 33):
        cache = MODEL.new_cache(3, 16)
        MODEL.forward(torch.tensor([p + [pad] * (5 - len(p)) for p in prefix]), cache, n_valid=torch.tensor([5, 2, 0]))
        assert cache.length.tolist() == [5, 2, 0]
        padded = [b[:n] + [pad] * (3 - n) for b, n in zip(block, n_valid)]
        out = MODEL.forward(torch.tensor(padded), cache, n_valid=torch.tensor(n_valid)).logits
        last = MODEL.forward(torch.tensor(nxt)[:, None], cache).logits
        for b in range(3):
            seq = prefix[b] + block[b][: n_valid[b]] + [nxt[b]]
            ref, k = full(seq), len(prefix[b])
            torch.testing.assert_close(out[b, : n_valid[b]], ref[k:k + n_valid[b]], atol=ATOL, rtol=0)
            torch.testing.assert_close(last[b, 0], ref[-1], atol=ATOL, rtol=0)
        results.append(last)
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)  # padding is invisible


def test_rows_roll_back_independently():
    first = [[5, 1, 30, 7, 7, 2, 9, 4], [3, 3, 8, 60, 1, 0, 2, 5]]
    cache = MODEL.new_cache(2, 16)
    length = cache.length
    MODEL.forward(torch.tensor(first), cache)
    cache.rollback(torch.tensor([3, 6]))
    assert cache.length is length and cache.length.tolist() == [3, 6]
    assert cache.physical == 6  # the tail neither row uses is cropped; row 0's slots 3..5 are holes
    second = [[40, 41, 42], [50, 51, 52]]
    out = MODEL.forward(torch.tensor(second), cache).logits
    for b, keep in enumerate((3, 6)):
        torch.testing.assert_close(out[b], full(first[b][:keep] + second[b])[keep:], atol=ATOL, rtol=0)
    cache.rollback(torch.tensor([5, 1]))
    out = MODEL.forward(torch.tensor([[10, 11], [12, 13]]), cache).logits
    seqs = [first[0][:3] + second[0][:2] + [10, 11], first[1][:1] + [12, 13]]
    for b, keep in enumerate((5, 1)):
        torch.testing.assert_close(out[b], full(seqs[b])[keep:], atol=ATOL, rtol=0)
    cache.rollback(torch.tensor([0, 0]))
    assert cache.physical == 0 and cache.kv.get_seq_length() == 0
    out = MODEL.forward(torch.tensor([[1, 2], [3, 4]]), cache).logits  # an emptied cache starts over
    torch.testing.assert_close(out, torch.stack([full([1, 2]), full([3, 4])]), atol=ATOL, rtol=0)


def test_random_feeds_and_rollbacks_with_compaction():
    """Random blocks (with padding) and rollbacks on a small cache: the physical store is compacted, never grown past capacity."""
    rng, B, S = random.Random(0), 3, 12
    cache, seqs, compacted = MODEL.new_cache(B, S), [[] for _ in range(B)], 0
    for _ in range(25):
        if rng.random() < 0.4:
            keep = [rng.randint(0, len(s)) for s in seqs]
            cache.rollback(torch.tensor(keep))
            seqs = [s[:k] for s, k in zip(seqs, keep)]
            continue
        T = rng.randint(1, 4)
        if max(map(len, seqs)) + T > S:
            with pytest.raises(CacheFull):
                MODEL.forward(torch.zeros(B, T, dtype=torch.long), cache)
            continue
        block = [[rng.randrange(V) for _ in range(T)] for _ in range(B)]
        n = [rng.randint(0, T) for _ in range(B)]
        before = cache.physical
        out = MODEL.forward(torch.tensor(block), cache, n_valid=torch.tensor(n)).logits
        compacted += cache.physical < before + T
        assert cache.physical <= S and cache.kv.get_seq_length() == cache.physical
        for b in range(B):
            k = len(seqs[b])
            seqs[b] += block[b][: n[b]]
            if n[b]:
                torch.testing.assert_close(out[b, : n[b]], full(seqs[b])[k:], atol=ATOL, rtol=0)
        assert cache.length.tolist() == [len(s) for s in seqs]
    assert compacted  # the walk exercised compaction


@pytest.mark.parametrize("L", [0, 1, 2])
def test_exit_layer_equals_builtin(L):
    tokens = torch.tensor([[5, 1, 30, 7, 7, 2]])
    out = MODEL.forward(tokens[:, :4], cache := MODEL.new_cache(1, 8), exit_layer=L)
    out2 = MODEL.forward(tokens[:, 4:], cache, exit_layer=L)
    ref = BUILTIN.forward(tokens, BUILTIN.new_cache(1, 8), exit_layer=L)
    torch.testing.assert_close(torch.cat([out.logits, out2.logits], 1), ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.hidden, ref.hidden[:, :4], atol=ATOL, rtol=0)
    if L == 2:
        torch.testing.assert_close(out.logits[0], full(tokens[0, :4].tolist()), atol=0, rtol=0)


def test_unsupported_options_are_clear():
    tokens = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="built-in Transformer only"):
        MODEL.forward(tokens, MODEL.new_cache(1, 4), skip_layers=(1,))
    with pytest.raises(ValueError, match="outside 0..2"):
        MODEL.forward(tokens, MODEL.new_cache(1, 4), exit_layer=3)
    torch.manual_seed(0)
    gpt2 = HFModel(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        gpt2.forward(tokens, gpt2.new_cache(1, 4), exit_layer=1)
    # any causal LM works otherwise: GPT-2 (learned absolute positions), ragged + rollback
    cache = gpt2.new_cache(2, 8)
    gpt2.forward(torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]]), cache, n_valid=torch.tensor([4, 2]))
    cache.rollback(torch.tensor([3, 2]))
    out = gpt2.forward(torch.tensor([[7, 8], [9, 10]]), cache).logits
    for b, seq in enumerate(([1, 2, 3, 7, 8], [5, 6, 9, 10])):
        torch.testing.assert_close(out[b], full(seq, gpt2.hf_model)[-2:], atol=ATOL, rtol=0)


def test_sliding_window_model_within_its_window():
    torch.manual_seed(0)
    config = transformers.MistralConfig(**{**TINY, "sliding_window": 8})
    mistral = HFModel(transformers.MistralForCausalLM(config).eval())
    with pytest.raises(DecError, match="sliding window of 8"):
        mistral.new_cache(1, 9)
    cache = mistral.new_cache(2, 8)
    mistral.forward(torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]]), cache, n_valid=torch.tensor([5, 3]))
    cache.rollback(torch.tensor([2, 3]))
    out = mistral.forward(torch.tensor([[9, 10, 11], [12, 13, 14]]), cache).logits
    for b, seq in enumerate(([1, 2, 9, 10, 11], [6, 7, 8, 12, 13, 14])):
        torch.testing.assert_close(out[b], full(seq, mistral.hf_model)[-3:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("parents", [[[-1, 0, 0, 1, 2, 1], [-1, 0, 1, 2, -1, 4]], [[-1, 0, 1], [-1, -1, 0]]])
def test_tree_and_commit_path_equal_builtin(parents):
    B, T = 2, len(parents[0])
    prefix = [[3, 1, 4, 1], [2, 7]]
    nodes = [[(11 * b + 5 * i) % V for i in range(T)] for b in range(B)]
    mask = torch.stack([ancestors_mask(p) for p in parents])
    outs, caches = [], []
    for model in (MODEL, BUILTIN):
        cache = model.new_cache(B, 16)
        model.forward(torch.tensor([p + [0] * (4 - len(p)) for p in prefix]), cache, n_valid=torch.tensor([4, 2]))
        outs.append(model.forward(torch.tensor(nodes), cache, tree_mask=mask).logits)
        caches.append(cache)
    torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=0)
    for b in range(B):  # each node sees exactly its branch
        for i in range(T):
            seq = prefix[b] + [nodes[b][j] for j in path_to(parents[b], i)]
            torch.testing.assert_close(outs[0][b, i], full(seq)[-1], atol=ATOL, rtol=0)
    paths = [path_to(parents[b], T - 1) for b in range(B)]
    start, n = torch.tensor([4, 2]), torch.tensor([len(p) for p in paths])
    padded = torch.tensor([p + [0] * (T - len(p)) for p in paths])
    nxt = []
    for model, cache in zip((MODEL, BUILTIN), caches):
        cache.commit_path(start, padded, n)
        assert cache.length.tolist() == (start + n).tolist()
        nxt.append(model.forward(torch.tensor([[7, 8], [9, 10]]), cache).logits)
    torch.testing.assert_close(nxt[0], nxt[1], atol=ATOL, rtol=0)
    assert torch.equal(caches[0].tokens[:, :8], caches[1].tokens[:, :8])
    for b in range(B):
        seq = prefix[b] + [nodes[b][j] for j in paths[b]] + [[7, 8], [9, 10]][b]
        torch.testing.assert_close(nxt[0][b], full(seq)[-2:], atol=ATOL, rtol=0)


def test_from_pretrained_round_trip_and_errors(tmp_path):
    good = tmp_path / "good"
    HF.save_pretrained(good)
    loaded = HFModel.from_pretrained(good)
    assert not loaded.hf_model.training and loaded.tokenizer is None and loaded.eos_token_id == 2
    tokens = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded.forward(tokens, loaded.new_cache(1, 4)).logits[0], full([1, 2, 3]), atol=0, rtol=0)

    missing = tmp_path / "missing"
    with pytest.raises(DecError, match="does not exist") as e:
        HFModel.from_pretrained(missing)
    assert str(missing) in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DecError, match="no config.json") as e:
        HFModel.from_pretrained(empty)
    assert str(empty) in str(e.value) and "save_pretrained" in str(e.value)
    corrupt = tmp_path / "corrupt"
    HF.save_pretrained(corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header" + b"\0" * 64)
    with pytest.raises(DecError, match="cannot load") as e:
        HFModel.from_pretrained(corrupt)
    assert str(corrupt) in str(e.value) and "re-save" in str(e.value)


def test_tokenizer_is_wrapped(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {f"w{i}": i for i in range(V)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="w1", eos_token="w2")
    HF.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = HFModel.from_pretrained(tmp_path)
    assert model.tokenizer.encode_prompt("w5 w6") == tok("w5 w6").input_ids == [5, 6]  # HF's own BOS rule: none here
    assert model.tokenizer.decode([5, 6]) == "w5 w6"
    backend.post_processor = tokenizers.processors.TemplateProcessing(single="w1 $A", special_tokens=[("w1", 1)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="w1", eos_token="w2")
    tok.save_pretrained(tmp_path)
    model = HFModel.from_pretrained(tmp_path)
    assert model.tokenizer.encode_prompt("w5 w6") == tok("w5 w6").input_ids == [1, 5, 6]  # a post-processor that adds BOS


def greedy(hf, prompt: list[int], n: int, eos: int | None) -> list[int]:
    """Greedy decoding by full HF forwards (argmax; first on ties)."""
    seq, out = list(prompt), []
    while len(out) < n:
        x = int(full(seq, hf)[-1].argmax())
        out.append(x)
        seq.append(x)
        if x == eos:
            break
    return out


def noisy_copy(hf, scale: float, seed: int):
    """The same architecture and weights plus N(0, scale) noise: a draft that agrees with the target only sometimes."""
    model = llama(0)
    model.load_state_dict(hf.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


@pytest.mark.parametrize("draft", ["other", "noisy", "same"])
def test_speculative_greedy_end_to_end(draft):
    """Ragged prompts; drafts rejected at different depths per row exercise the per-row rollback of one HF cache."""
    target = HFModel(HF)
    drafter = HFModel({"other": lambda: llama(1, num_hidden_layers=1), "noisy": lambda: noisy_copy(HF, 0.02, 2),
                       "same": lambda: HF}[draft]())
    prompts = [[5, 6, 7, 8, 9], [10]]
    dec = decspec.compile("specs/speculative_greedy.dec", target=target, draft=drafter, k=3, confidence=0.0)
    out = dec.generate(prompts, max_new_tokens=16, seed=0)
    assert out.tokens == [greedy(HF, p, 16, target.eos_token_id) for p in prompts]
    if draft == "same":
        assert out.stats.accepted == out.stats.drafted  # every draft accepted
