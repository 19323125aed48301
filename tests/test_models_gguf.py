"""GGUF checkpoints: a tiny model written as llama.cpp's converter writes one (q/k rows permuted, Q8_0
and Q4_1 blocks, a byte-level BPE vocabulary in the header) must load into the built-in Transformer
with the logits `transformers` gives on the same file (its own GGUF loader, a reference decspec did
not write), and text must tokenize as the Hugging Face tokenizer the vocabulary came from."""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from decspec.dsl.diagnostics import DecError  # noqa: E402
from decspec.stdlib.models.gguf import convert_gguf, load_gguf, read_gguf, unpermute  # noqa: E402
from decspec.stdlib.models.pretrained import load_transformer  # noqa: E402

TEXTS = ["def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n", "The year 2024 had 366 days.",
         "  spaces\tand ünïcødé 日本語 🙂", "<|im_start|>user\nHi<|im_end|>\n", "x = 12345 + 0.5e-3"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to q/k rows (the inverse of decspec's unpermute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A small byte-level BPE with SmolLM2's pre-tokenizer (digits split one by one, then GPT-2's regex)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    import inspect

    tok.train_from_iterator([inspect.getsource(np.linalg.norm), inspect.getsource(torch.nn.Linear)] * 3 + TEXTS, trainer=trainer)
    return tok


def write_gguf(path, hf_model, tok, *, add_bos: bool = False, qtype=None) -> None:
    """`hf_model` (a transformers LlamaForCausalLM) and `tok` as a GGUF file, the way llama.cpp writes one."""
    c = hf_model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in SPECIAL else 1 for t, _ in vocab])
    import json

    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in json.loads(tok.to_str())["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(add_bos)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, t in hf_model.state_dict().items():
        a = t.float().numpy()
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            out = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            module = rest.rsplit(".", 1)[0]
            out = f"blk.{layer}.{names[module]}.weight"
            if module == "self_attn.q_proj":
                a = permute(a, c.num_attention_heads)
            elif module == "self_attn.k_proj":
                a = permute(a, c.num_key_value_heads)
        if a.ndim == 2 and qtype is not None:
            w.add_tensor(out, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(out, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_llama(tie: bool, vocab: int):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)  # non-trivial norms, so a misplaced norm tensor shows
    return model


@pytest.mark.parametrize("tie,qtype", [(True, gguf.GGMLQuantizationType.Q8_0), (False, gguf.GGMLQuantizationType.Q4_1), (True, None)])
def test_logits_equal_transformers_gguf_loader(tmp_path, hf_tokenizer, tie, qtype):
    if qtype == gguf.GGMLQuantizationType.Q4_1:
        pytest.importorskip("gguf.quants").quantize  # Q4_1 quantization exists in every gguf with quants
    model = tiny_llama(tie, hf_tokenizer.get_vocab_size())
    file = tmp_path / "tiny.gguf"
    write_gguf(file, model, hf_tokenizer, qtype=qtype)
    ours = load_gguf(file)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=file.name, dtype=torch.float32).eval()
    ids = torch.tensor([ours.tokenizer.encode(TEXTS[0])[:24]])
    with torch.no_grad():
        expected = theirs(ids).logits
    got = ours.forward(ids, ours.new_cache(1, 64)).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    cache = ours.new_cache(1, 64)  # and incrementally, through the KV cache
    ours.forward(ids[:, :10], cache)
    for t in range(10, 14):
        step = ours.forward(ids[:, t : t + 1], cache).logits[:, 0]
        assert torch.allclose(step, expected[:, t], atol=1e-4)
    if qtype is None:  # unquantized: the weights themselves come back exactly, q/k un-permuted
        for name, t in model.state_dict().items():
            assert torch.equal(ours.state_dict()[name], t), name


def test_tokenizer_equals_the_source_tokenizer(tmp_path, hf_tokenizer):
    model = tiny_llama(True, hf_tokenizer.get_vocab_size())
    write_gguf(tmp_path / "tiny.gguf", model, hf_tokenizer)
    tok = load_gguf(tmp_path / "tiny.gguf").tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    for text in TEXTS:
        source = hf_tokenizer.encode(text).ids  # the tokenizer the vocabulary came from
        assert tok.encode(text) == source, text
        assert tok.encode_prompt(text) == source  # no BOS: add_bos_token is false, as SmolLM2's
        assert theirs(text).input_ids == source
        assert tok.decode(source) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert tok.encode("<|im_end|>") == [2]  # control tokens are special added tokens
    assert tok.eos_token_id == 2 and tok.bos_token_id == 1
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_bos_rule_follows_the_file(tmp_path, hf_tokenizer):
    model = tiny_llama(True, hf_tokenizer.get_vocab_size())
    write_gguf(tmp_path / "bos.gguf", model, hf_tokenizer, add_bos=True)
    tok = load_gguf(tmp_path / "bos.gguf").tokenizer
    assert tok.encode_prompt("x = 1") == [1] + hf_tokenizer.encode("x = 1").ids


def test_convert_writes_a_directory_transformers_and_decspec_load(tmp_path, hf_tokenizer):
    model = tiny_llama(False, hf_tokenizer.get_vocab_size())
    write_gguf(tmp_path / "m.gguf", model, hf_tokenizer)
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "converted")
    ours = load_transformer(out)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 9, 33, 2, 100]])
    with torch.no_grad():
        assert torch.allclose(ours.forward(ids, ours.new_cache(1, 16)).logits, theirs(ids).logits, atol=1e-4)
    assert not list(out.glob(".*.partial"))


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(8 * 4 * 3, dtype=np.float32).reshape(8 * 4, 3)
    assert np.array_equal(unpermute(permute(w, 4), 4), w)


def test_files_that_are_not_gguf(tmp_path):
    secret = tmp_path / "environ"
    secret.write_text("AWS_SECRET=hunter2\n" * 10)
    with pytest.raises(DecError) as e:
        read_gguf(secret)
    assert "hunter2" not in str(e.value) and "not a GGUF file" in str(e.value)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)
    with pytest.raises(DecError, match="corrupt or truncated"):
        read_gguf(truncated)
    with pytest.raises(DecError, match="does not exist"):
        read_gguf(tmp_path / "missing.gguf")
