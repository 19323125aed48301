"""The bytes each token id stands for: what a grammar index walks.

    vocab = token_bytes(Tokenizer.from_dir(REFERENCE / "target"))   # list[bytes | None], one per id
    vocab[0]   # None: '<|endoftext|>' is a special token
    vocab[1]   # b'!'; a byte-level BPE token 'Ġthe' is b' the'

Byte-level BPE (the GPT-2 bytes-to-unicode alphabet), SentencePiece-style `<0xNN>` byte-fallback tokens and
`▁` word markers, and plain text tokens are understood. Special tokens map to None: no grammar allows them
(EOS is handled apart, by id).
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, reversed: char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def fallback_byte(token: str) -> int | None:
    """The byte of a `<0xNN>` byte-fallback token, else None."""
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return int(token[3:5], 16)
        except ValueError:
            return None
    return None


def decode_token(token: str, style: str) -> bytes:
    """One vocabulary entry's bytes; `style` is "byte_level", "metaspace" or "plain"."""
    byte = fallback_byte(token)
    if byte is not None:
        return bytes([byte])
    if style == "byte_level":
        table = byte_decoder()
        if all(c in table for c in token):
            return bytes(table[c] for c in token)
    if style == "metaspace":
        token = token.replace("\u2581", " ")
    return token.encode("utf-8")


def decoder_style(config: dict | None) -> str:
    """"byte_level", "metaspace" or "plain", from a `tokenizers` JSON `decoder` entry."""
    if not config:
        return "plain"
    kinds = [config.get("type")] + [d.get("type") for d in config.get("decoders", []) or []]
    if "ByteLevel" in kinds:
        return "byte_level"
    replaces = [d for d in config.get("decoders", []) or [] if d.get("type") == "Replace"]
    if "Metaspace" in kinds or any("\u2581" in json.dumps(d.get("pattern", "")) for d in replaces):
        return "metaspace"
    return "plain"


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """The bytes of every token id (None for special tokens) of a decspec `Tokenizer`, a `tokenizers.Tokenizer`,
    a transformers fast tokenizer, or a ready list of bytes (returned as a copy)."""
    if isinstance(tokenizer, (list, tuple)):
        if set(map(type, tokenizer)) <= {bytes, type(None)}:  # already bytes: a plain copy (32k tokens: 0.3 ms, not 5)
            return list(tokenizer)
        return [None if t is None else bytes(t) for t in tokenizer]
    backend = getattr(tokenizer, "backend", tokenizer)  # decspec's Tokenizer wraps the real one
    backend = getattr(backend, "backend_tokenizer", backend)  # transformers fast -> tokenizers
    if not hasattr(backend, "to_str"):
        raise TypeError(f"token_bytes needs a tokenizers-based tokenizer or a list of bytes, got {type(tokenizer).__name__}")
    style = decoder_style(json.loads(backend.to_str()).get("decoder"))
    vocab = backend.get_vocab(with_added_tokens=True)
    added = backend.get_added_tokens_decoder()
    size = max(backend.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)
    out: list[bytes | None] = [None] * size
    for token, i in vocab.items():
        if i in added:
            out[i] = None if added[i].special else added[i].content.encode("utf-8")
        else:
            out[i] = decode_token(token, style)
    return out
