"""Load Hugging Face Llama-family checkpoints (llama, qwen2, qwen3, mistral) into decspec's built-in Transformer,
and the shipped reference pair.

    models = reference_models()                        # {"target": ..., "draft": ...}, trained, with a tokenizer
    target = load_transformer("path/to/llama-dir")     # config.json + model.safetensors (+ tokenizer, heads)
    model = load_model("path/to/any-hf-dir")           # built-in Transformer for the Llama family, else the HF adapter

The reference pair lives in `reference/` beside this file (trained by `decspec.stdlib.models.train`
on the Python standard library; see docs/models.md). Every failure to load names the file and the fix.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from decspec.dsl.diagnostics import DecError, excerpt
from decspec.stdlib.models.heads import HEADS
from decspec.stdlib.models.tokenizer import Tokenizer
from decspec.stdlib.models.transformer import Transformer, TransformerConfig
from decspec.stdlib.models.transformer_config import MODEL_TYPES, InvalidConfig, Unsupported

REFERENCE = Path(__file__).with_name("reference")
MAX_HEADS = 64  # draft heads in heads.json (Medusa and Hydra use 3-5): each is a hidden x hidden block or more


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a model directory, as a dict."""
    path = Path(path)
    if not path.exists():
        raise DecError(f"model directory {path} does not exist; pass a local Hugging Face model directory (config.json + weights)")
    if not path.is_dir():
        raise DecError(f"{path} is a file; pass the model's directory (the one holding config.json)")
    file = path / "config.json"
    if not file.is_file():
        raise DecError(f"{path} has no config.json; is it a Hugging Face model directory? (save one with model.save_pretrained(DIR))")
    return read_json(file)


def read_json(file: Path) -> dict[str, Any]:
    """A JSON object from a file; bad JSON is a DecError naming the file."""
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise DecError(f"{file} is not valid JSON ({e}); re-save it") from None
    if not isinstance(data, dict):
        raise DecError(f"{file} must hold a JSON object")
    return data


def weight_files(path: Path) -> list[Path]:
    """model.safetensors, or the shards listed in model.safetensors.index.json."""
    index = path / "model.safetensors.index.json"
    files = [path / "model.safetensors"]
    if not files[0].is_file() and index.is_file():
        try:
            files = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise DecError(f"{index} is not a valid safetensors index ({e})") from None
    for file in files:
        if not file.is_file():
            have = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
            raise DecError(f"{path} has no weights file {file.name} (it holds: {have}); decspec reads safetensors weights")
    return files


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the weights, from the safetensors headers alone: no tensor is read."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in weight_files(path):
        try:
            with safe_open(str(file), framework="pt") as f:
                shapes.update((k, tuple(f.get_slice(k).get_shape())) for k in f.keys())
        except Exception as e:
            raise DecError(f"cannot read weights {file}: {e}; the file is corrupt or truncated — re-save or re-copy it") from None
    return shapes


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards listed in model.safetensors.index.json."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        try:
            state.update(load_file(str(file)))
        except Exception as e:
            raise DecError(f"cannot read weights {file}: {e}; the file is corrupt or truncated — re-save or re-copy it") from None
    return state


def load_transformer(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", tokenizer: bool = True,
    quantize: str | None = None,
) -> Transformer:
    """A Llama-family checkpoint directory (model_type llama, qwen2, qwen3 or mistral) -> decspec's Transformer
    (weights cast to `dtype`), with its tokenizer and draft heads. config.json is checked before any tensor is
    allocated: its values (transformer_config.check_values), then the names and shapes it implies against the
    safetensors headers; a config with huge or negative sizes, or one that does not describe its weights, allocates nothing.
    quantize: "int4" runs the weights quantized (stdlib/models/quant.py; not the float32 model's arithmetic)."""
    path = Path(path)
    if quantize is not None:
        from decspec.stdlib.models.quant import check_scheme

        check_scheme(quantize)
    raw = read_config(path)
    if raw.get("model_type") not in (None, *MODEL_TYPES):
        raise DecError(
            f"{path / 'config.json'}: model_type '{excerpt(str(raw.get('model_type')))}' is not one the built-in model runs "
            f"({', '.join(MODEL_TYPES)}); load other architectures with decspec.stdlib.models.hf.HFModel.from_pretrained "
            "(or decspec.stdlib.models.pretrained.load_model, which picks the adapter)"
        )
    try:
        config = TransformerConfig.from_dict(raw)
    except InvalidConfig as e:  # no runtime could load it: no hint towards transformers
        raise DecError(f"{path / 'config.json'}: {e}") from None
    except (TypeError, ValueError) as e:
        raise DecError(f"{path / 'config.json'}: {e}; load this checkpoint with decspec.stdlib.models.hf.HFModel.from_pretrained "
                       "instead (transformers runs it as it is)") from None
    shapes = weight_shapes(path)
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    implied = Transformer(config, dtype=dtype, device="meta").state_dict()  # names and shapes; nothing allocated
    expected = {k for k in implied if not (config.tie_word_embeddings and k == "lm_head.weight")}
    missing, unexpected = sorted(expected - shapes.keys()), sorted(shapes.keys() - expected)
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}"] if unexpected else []
        )
        raise DecError(f"weights in {path} do not match its config.json ({'; '.join(parts)})")
    for name, shape in shapes.items():
        if shape != tuple(implied[name].shape):
            raise DecError(f"weights in {path}: {name} has shape {shape} but config.json implies {tuple(implied[name].shape)}")
    model = Transformer(config, dtype=dtype, device=device)
    params = model.state_dict()
    for name, tensor in read_weights(path).items():
        if name in expected:
            params[name].copy_(tensor.to(dtype))
    model.name = str(path)
    if tokenizer and (path / "tokenizer.json").is_file():
        model.tokenizer = Tokenizer.from_dir(path)
        if model.eos_token_id is None:
            model.eos_token_id = model.tokenizer.eos_token_id
    model.eos_token_ids = generation_eos(path, config)
    if (path / "heads.safetensors").is_file():
        model.heads = load_heads(path, config, dtype=dtype, device=device)
    if (path / "eagle.safetensors").is_file():
        model.heads = {**model.heads, "eagle": load_eagle(path, config, dtype=dtype, device=device)}
    if quantize is not None:
        from decspec.stdlib.models.quant import quantize as quantize_model

        quantize_model(model, quantize)
    return model


def generation_eos(path: Path, config: TransformerConfig) -> tuple[int, ...]:
    """Every EOS id of a checkpoint, as Hugging Face generate reads them: generation_config.json's eos_token_id (one id
    or a list), else config.json's (`eos_token_ids`); ids that are not token ids of the vocabulary are refused."""
    file = path / "generation_config.json"
    eos = read_json(file).get("eos_token_id") if file.is_file() else None
    if eos is None:
        return config.eos_token_ids
    ids = eos if isinstance(eos, list) else [eos]
    for v in ids:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < config.vocab_size:
            raise DecError(f"{file}: eos_token_id {excerpt(repr(eos))} must be a token id in [0, {config.vocab_size}) or a list of them")
    return tuple(ids)


def load_heads(path: Path, config: TransformerConfig, *, dtype: torch.dtype, device: str | torch.device) -> dict[str, torch.nn.Module]:
    """heads.safetensors + heads.json -> {"medusa": MedusaHeads, "hydra": HydraHeads} (whichever are present)."""
    meta_file = path / "heads.json"
    if not meta_file.is_file():
        raise DecError(f"{path} has heads.safetensors but no heads.json describing them")
    meta = read_json(meta_file)
    from safetensors.torch import load_file

    try:
        state = load_file(str(path / "heads.safetensors"))
    except Exception as e:
        raise DecError(f"cannot read {path / 'heads.safetensors'}: {e}; the file is corrupt or truncated") from None
    heads = {}
    for kind, spec in meta.items():
        if kind not in HEADS:
            raise DecError(f"{meta_file}: unknown head kind {kind!r} (known: {', '.join(HEADS)})")
        heads_n = spec.get("num_heads") if isinstance(spec, dict) else None
        if not isinstance(heads_n, int) or isinstance(heads_n, bool) or not 1 <= heads_n <= MAX_HEADS:
            raise DecError(f"{meta_file}: {kind} num_heads must be an integer in [1, {MAX_HEADS}] (got {excerpt(repr(heads_n))})")
        if spec.get("hidden_size") != config.hidden_size:
            raise DecError(f"{meta_file}: {kind} heads have hidden_size {spec.get('hidden_size')} but the model has {config.hidden_size}")
        module = HEADS[kind](config.hidden_size, int(spec["num_heads"]), dtype=dtype).to(device)
        own = {k.removeprefix(f"{kind}."): v.to(dtype) for k, v in state.items() if k.startswith(f"{kind}.")}
        try:
            module.load_state_dict(own)
        except RuntimeError as e:
            raise DecError(f"{path / 'heads.safetensors'}: {kind} heads do not match heads.json ({e})") from None
        heads[kind] = module.requires_grad_(False).eval()
    return heads


def load_eagle(path: Path, config: TransformerConfig, *, dtype: torch.dtype, device: str | torch.device) -> torch.nn.Module:
    """eagle.safetensors + eagle.json -> an EagleHead (stdlib/models/eagle.py) on the model's features."""
    from safetensors.torch import load_file

    from decspec.stdlib.models.eagle import EagleHead

    meta_file = path / "eagle.json"
    if not meta_file.is_file():
        raise DecError(f"{path} has eagle.safetensors but no eagle.json describing the head")
    meta = read_json(meta_file)
    if meta.get("hidden_size") != config.hidden_size:
        raise DecError(f"{meta_file}: the eagle head has hidden_size {meta.get('hidden_size')} but the model has {config.hidden_size}")
    try:
        head = EagleHead(config.hidden_size, window=int(meta["window"]), intermediate_size=int(meta["intermediate_size"]),
                         num_attention_heads=int(meta["num_attention_heads"]), num_key_value_heads=int(meta["num_key_value_heads"]),
                         dtype=dtype).to(device)
        head.load_state_dict({k: v.to(dtype) for k, v in load_file(str(path / "eagle.safetensors")).items()})
    except (KeyError, TypeError, ValueError) as e:
        raise DecError(f"{meta_file}: missing or bad field {e}; re-save the head with decspec.stdlib.models.train --only eagle") from None
    except Exception as e:
        raise DecError(f"cannot load {path / 'eagle.safetensors'}: {e}; the file is corrupt or does not match eagle.json") from None
    return head.requires_grad_(False).eval()


def attach_drafts(target: Transformer, folder: Path) -> Transformer | None:
    """Drafts shipped for a target in `folder` (stdlib/models/train_drafts.py writes them) -> onto the target:
    Medusa/Hydra heads (heads.*), an EAGLE head (eagle.*), the draft vocabulary (draft_vocab.safetensors);
    returns the draft model in folder/draft (one sharing the target's embedding and LM head), or None."""
    from safetensors.torch import load_file

    kw = dict(dtype=target.dtype, device=target.device)
    if (folder / "heads.safetensors").is_file():
        target.heads = {**target.heads, **load_heads(folder, target.config, **kw)}
    if (folder / "eagle.safetensors").is_file():
        target.heads = {**target.heads, "eagle": load_eagle(folder, target.config, **kw)}
    vocab = folder / "draft_vocab.safetensors"
    if vocab.is_file():
        try:
            ids = load_file(str(vocab))["ids"].long()
        except Exception as e:
            raise DecError(f"cannot read {vocab}: {type(e).__name__}; the file is corrupt (reinstall decspec)") from None
        if ids.dim() != 1 or len(ids) == 0 or int(ids.min()) < 0 or int(ids.max()) >= target.vocab_size:
            raise DecError(f"{vocab}: the draft vocabulary does not fit this model's {target.vocab_size} tokens")
        target.set_draft_vocabulary(ids)
    if not (folder / "draft" / "draft.json").is_file():
        return None
    return load_shared_draft(folder / "draft", target)


def load_shared_draft(path: Path, target: Transformer) -> Transformer:
    """A draft that stores only its own layers and final norm (draft.json + model.safetensors) and uses the
    target's embedding and (drafting) LM head, the same tensors, not copies."""
    from dataclasses import replace

    from safetensors.torch import load_file

    meta = read_json(path / "draft.json")
    layers = meta.get("num_hidden_layers")
    if not isinstance(layers, int) or not 1 <= layers <= target.num_layers:
        raise DecError(f"{path / 'draft.json'}: num_hidden_layers must be an int in 1..{target.num_layers}, not {layers!r}")
    draft = Transformer(replace(target.config, num_hidden_layers=layers), dtype=target.dtype, device=target.device)
    draft.model.embed_tokens = target.model.embed_tokens
    draft.lm_head = target.drafting_head
    try:
        state = load_file(str(path / "model.safetensors"))
    except Exception as e:
        raise DecError(f"cannot read {path / 'model.safetensors'}: {type(e).__name__}; the file is corrupt (reinstall decspec)") from None
    own = {k: v for k, v in draft.state_dict().items() if k.startswith(("model.layers.", "model.norm."))}
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise DecError(f"{path / 'model.safetensors'} does not hold the {layers}-layer draft draft.json describes")
    for k, v in state.items():
        own[k].copy_(v.to(target.dtype))
    draft.tokenizer, draft.eos_token_id = target.tokenizer, target.eos_token_id
    draft.name = f"{getattr(target, 'name', 'target')}:draft"
    return draft.requires_grad_(False).eval()


def load_model(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               quantize: str | None = None):
    """A local model directory -> the built-in Transformer for the checkpoints it runs exactly (llama, qwen2, qwen3,
    mistral, with a config it supports and safetensors weights), the HF adapter for anything else."""
    raw = read_config(path)
    if raw.get("model_type") in (None, *MODEL_TYPES) and not (Path(path) / "pytorch_model.bin").is_file():
        try:
            TransformerConfig.from_dict(raw)
            builtin = True
        except Unsupported:  # e.g. a RoPE scaling the built-in model does not implement: transformers runs it
            builtin = False
        except (TypeError, ValueError):  # a broken config.json: load_transformer's DecError names the fix
            builtin = True
        if builtin:
            return load_transformer(path, dtype=dtype, device=device, quantize=quantize)
    if quantize is not None:
        raise DecError(f"{path}: quantize={quantize!r} runs on decspec's built-in transformer (Llama, Qwen2/3, Mistral), "
                       "and this checkpoint loads through transformers", hint="drop the quantization for this model")
    from decspec.stdlib.models.hf import HFModel

    return HFModel.from_pretrained(path, dtype=dtype, device=device)


@lru_cache(maxsize=4)
def _reference(role: str, dtype: torch.dtype) -> Transformer:
    path = REFERENCE / role
    if not (path / "config.json").is_file():
        raise DecError(f"the reference {role} model is missing from {path}; reinstall decspec or train it: "
                       f"python -m decspec.stdlib.models.train --out {REFERENCE}")
    return load_transformer(path, dtype=dtype)


def reference_models(dtype: torch.dtype = torch.float32) -> dict[str, Transformer]:
    """The shipped, trained pair: `"target"` (6 layers, hidden 256, early-exit trained, Medusa/Hydra/EAGLE heads)
    and `"draft"` (1 layer), one 4096-token byte-level BPE vocabulary, trained on Python stdlib source.

    Loaded once per process and shared: decoding never changes the weights.
    """
    return {"target": _reference("target", dtype), "draft": _reference("draft", dtype)}
