"""Read a GGUF checkpoint (llama.cpp's format) into a Hugging Face-shaped model directory.

    config, state, tokenizer_json, tokenizer_config = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    convert_gguf("model.gguf", "out-dir")     # config.json + model.safetensors + tokenizer files
    model = load_gguf("model.gguf")           # straight into the built-in Transformer

Weights are dequantized to float32 with the `gguf` package (what `transformers` does with
`gguf_file=`), so the logits equal `transformers`' on the same file. llama.cpp stores the q/k
projections of Llama-architecture models with the rows of each head interleaved for its rotary
kernel; they are permuted back here (HF's `rotate_half` order). The tokenizer is rebuilt from
the file's metadata as a `tokenizers` BPE with the pre-tokenizer its `tokenizer.ggml.pre` names,
so text tokenizes as the model's own Hugging Face tokenizer does; control tokens become special
added tokens, and the BOS rule (`add_bos_token`) and chat template are kept in tokenizer_config.json.

Supported: architectures llama (Llama, SmolLM2, Mistral), qwen2 and qwen3 with a byte-level BPE
("gpt2") vocabulary. Anything else is a DecError naming the file and the field.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from decspec.dsl.diagnostics import DecError, excerpt
from decspec.progress import progress

MAGIC = b"GGUF"
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}  # GGUF general.architecture -> HF model_type

# tokenizer.ggml.pre -> the split a Hugging Face tokenizer.json applies before byte-level BPE.
# "smollm" and "starcoder" split every digit alone first (tokenizers' Digits(individual_digits)),
# then GPT-2's regex (ByteLevel use_regex); "qwen2" uses its own regex with single digits.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def _split(pattern: str) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {**BYTE_LEVEL, "use_regex": False},
    ]}


PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "default": BYTE_LEVEL,
    "gpt-2": BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]},
    "starcoder": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]},
    "qwen2": _split(QWEN2_SPLIT),
    "llama-bpe": _split(LLAMA3_SPLIT),
}

# GGUF tensor names -> HF names, per layer ("blk.{i}." -> "model.layers.{i}.")
LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                  "output.weight": "lm_head.weight"}


def shown(value: Any) -> str:
    """A header value in a message: a short, escaped excerpt (the header is the file's, whoever wrote it)."""
    return f"'{excerpt(value)}'" if isinstance(value, str) else excerpt(repr(value))


def open_gguf(path: str | Path):
    """A `gguf.GGUFReader` over `path`; a file that is not GGUF is a DecError that quotes nothing of it."""
    path = Path(path)
    if not path.is_file():
        raise DecError(f"GGUF file {path} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise DecError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
                           "pass a llama.cpp .gguf file or a Hugging Face model directory")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise DecError("reading GGUF files needs the `gguf` package: pip install gguf") from None
    try:
        return GGUFReader(str(path))
    except Exception as e:  # truncated or corrupt: the reader's own message names the offset, never the data
        raise DecError(f"cannot read GGUF file {path}: {type(e).__name__}: {excerpt(str(e), 200)}; the file is corrupt or truncated") from None


def metadata(reader) -> dict[str, Any]:
    """Every key/value of the file except the large tokenizer arrays."""
    out = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            continue
        try:
            out[key] = field.contents()
        except Exception:  # a field gguf cannot decode is one decspec does not use
            continue
    return out


def hf_config(meta: dict[str, Any], file: Path, n_vocab: int, has_output: bool) -> dict[str, Any]:
    """The GGUF header -> an HF config.json dict for the built-in Transformer."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise DecError(f"{file}: general.architecture {shown(arch)} is not supported (supported: {', '.join(ARCHITECTURES)}); "
                       "load other architectures through transformers with decspec.stdlib.models.hf.HFModel")

    def get(key: str, default: Any = None, required: bool = True) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None and required:
            raise DecError(f"{file}: the header has no {arch}.{key}; the file is incomplete")
        return value

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    config: dict[str, Any] = {
        "model_type": ARCHITECTURES[arch],
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[arch]],
        "vocab_size": int(get("vocab_size", n_vocab)),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": int(get("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "tie_word_embeddings": not has_output,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    if arch == "qwen2":
        config["attention_bias"] = True
    scaling = get("rope.scaling.type", None, required=False)
    if scaling not in (None, "none"):
        factor = get("rope.scaling.factor", None, required=False)
        config["rope_scaling"] = {"rope_type": scaling, "factor": factor,
                                  "original_max_position_embeddings": get("rope.scaling.original_context_length", None, required=False)}
    return config


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's interleaved rotary rows of a q/k projection [n_head*D, C] back to HF's half-split order."""
    d = w.shape[0] // n_head // 2
    return w.reshape(n_head, d, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_state(reader, config: dict[str, Any], file: Path) -> dict[str, torch.Tensor]:
    """Dequantized float32 tensors under HF `LlamaForCausalLM`-style names."""
    from gguf.quants import dequantize

    state: dict[str, torch.Tensor] = {}
    permute = config["model_type"] == "llama"  # convert_hf_to_gguf permutes q/k for the llama architecture only
    for t in progress(reader.tensors, f"dequantizing {file.name}", unit="tensor"):
        name = t.name
        if name in GLOBAL_TENSORS:
            hf = GLOBAL_TENSORS[name]
        elif name.startswith("blk."):
            _, layer, kind, suffix = (name.split(".", 3) + [""])[:4]
            if kind not in LAYER_TENSORS or suffix not in ("weight", "bias"):
                raise DecError(f"{file}: tensor {name} is not part of a {config['model_type']} model decspec can run")
            hf = f"model.layers.{layer}.{LAYER_TENSORS[kind]}.{suffix}"
        elif name == "rope_freqs.weight":  # per-frequency RoPE factors (Llama 3.1-style scaling) are not read yet
            raise DecError(f"{file}: tensor rope_freqs.weight (Llama 3.1-style scaled RoPE) is not supported from GGUF yet; "
                           "load the model's Hugging Face directory instead (config.json carries its rope_scaling)")
        else:
            raise DecError(f"{file}: tensor {name} is not part of a {config['model_type']} model decspec can run")
        try:
            w = dequantize(t.data, t.tensor_type)
        except (NotImplementedError, ValueError, KeyError) as e:
            raise DecError(f"{file}: tensor {name} has quantization type {t.tensor_type.name}, which the gguf package "
                           f"cannot dequantize ({e}); upgrade gguf or use another quantization of the model") from None
        w = np.ascontiguousarray(w.reshape([int(n) for n in reversed(t.shape)]), dtype=np.float32)
        if permute and name.endswith("attn_q.weight"):
            w = unpermute(w, config["num_attention_heads"])
        elif permute and name.endswith("attn_k.weight"):
            w = unpermute(w, config["num_key_value_heads"])
        state[hf] = torch.from_numpy(w if w.flags.writeable else w.copy())
    return state


def hf_tokenizer(reader, meta: dict[str, Any], file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The GGUF vocabulary -> (tokenizer.json dict, tokenizer_config.json dict) for the `tokenizers` library."""
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise DecError(f"{file}: tokenizer.ggml.model {shown(model)} is not supported (decspec rebuilds byte-level BPE "
                       "vocabularies, 'gpt2'); convert the model to a Hugging Face directory with its tokenizer.json")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise DecError(f"{file}: tokenizer.ggml.pre {shown(pre)} is not a pre-tokenizer decspec knows "
                       f"(known: {', '.join(sorted(PRE_TOKENIZERS))}); text would not tokenize as the model's own tokenizer")
    tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
    types = list(reader.fields["tokenizer.ggml.token_type"].contents()) if "tokenizer.ggml.token_type" in reader.fields else [1] * len(tokens)
    merges = list(reader.fields["tokenizer.ggml.merges"].contents()) if "tokenizer.ggml.merges" in reader.fields else []
    # token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": ty == 4, "special": ty == 3} for i, (tok, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": {**BYTE_LEVEL, "trim_offsets": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {tok: i for i, tok in enumerate(tokens)}, "merges": [m.split(" ", 1) for m in merges]},
    }

    def name(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    if meta.get("tokenizer.ggml.add_bos_token") and name("bos") is not None:  # BOS first, through the post-processor as in HF
        bos = name("bos")
        tokenizer["post_processor"] = {"type": "TemplateProcessing",
                                       "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                                       "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                                {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                                       "special_tokens": {bos: {"id": bos, "ids": [meta["tokenizer.ggml.bos_token_id"]], "tokens": [bos]}}}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name("bos"), "eos_token": name("eos"),
              "unk_token": name("unknown"), "pad_token": name("padding"),
              "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
              "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
              "clean_up_tokenization_spaces": False, "model_max_length": int(meta.get(f"{meta['general.architecture']}.context_length", 2048))}
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return tokenizer, {k: v for k, v in config.items() if v is not None}


def read_gguf(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """GGUF file -> (config.json dict, float32 state dict with HF names, tokenizer.json dict, tokenizer_config dict)."""
    file = Path(path)
    reader = open_gguf(file)
    meta = metadata(reader)
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise DecError(f"{file}: the file has no vocabulary (tokenizer.ggml.tokens); decspec needs the model's tokenizer")
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    config = hf_config(meta, file, n_vocab, has_output=any(t.name == "output.weight" for t in reader.tensors))
    state = hf_state(reader, config, file)
    tokenizer, tokenizer_config = hf_tokenizer(reader, meta, file)
    config["source"] = {"gguf": file.name, "general.name": meta.get("general.name"), "file_type": meta.get("general.file_type")}
    return config, state, tokenizer, tokenizer_config


def convert_gguf(path: str | Path, out: str | Path) -> Path:
    """Write a GGUF file as an HF-shaped directory: config.json, model.safetensors (float32), tokenizer files.

    The directory loads with `load_transformer(out)` (and with transformers' AutoModelForCausalLM).
    Files are written under temporary names and renamed, so an interrupted conversion leaves no
    half-written model behind.
    """
    from safetensors.torch import save_file

    config, state, tokenizer, tokenizer_config = read_gguf(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    files = {
        "model.safetensors": lambda f: save_file(state, str(f), metadata={"format": "pt"}),
        "tokenizer.json": lambda f: f.write_text(json.dumps(tokenizer, ensure_ascii=False)),
        "tokenizer_config.json": lambda f: f.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n"),
        "generation_config.json": lambda f: f.write_text(json.dumps(
            {"bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id")}, indent=2) + "\n"),
        "config.json": lambda f: f.write_text(json.dumps(config, indent=2) + "\n"),  # last: its presence marks a finished conversion
    }
    for name, write in files.items():
        tmp = out / f".{name}.partial"
        write(tmp)
        tmp.replace(out / name)
    return out


def load_gguf(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
              quantize: str | None = None):
    """A GGUF file -> the built-in Transformer with its tokenizer (converted through a temporary directory)."""
    import tempfile

    from decspec.stdlib.models.pretrained import load_transformer

    with tempfile.TemporaryDirectory(prefix="decspec-gguf-") as tmp:
        model = load_transformer(convert_gguf(path, tmp), dtype=dtype, device=device, quantize=quantize)
    model.name = str(path)
    return model
