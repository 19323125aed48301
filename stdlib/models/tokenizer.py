"""Text in, text out: one small wrapper over a Hugging Face `tokenizers.Tokenizer` or a `transformers` tokenizer.

    tok = Tokenizer.from_dir("stdlib/models/reference/target")
    ids = tok.encode_prompt("def fibonacci(n):")     # BOS first, when the tokenizer names one
    text = tok.decode(ids[1:])

Models that carry a tokenizer (`model.tokenizer`) let `Decoder.generate` take strings.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from decspec.dsl.diagnostics import DecError


class Tokenizer:
    """ids <-> text. `backend` is a `tokenizers.Tokenizer` or a transformers `PreTrainedTokenizerBase`."""

    def __init__(self, backend: Any, *, bos_token_id: int | None = None, eos_token_id: int | None = None, name: str = ""):
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.name = name
        self._fast = hasattr(backend, "encode_batch")  # a bare `tokenizers.Tokenizer`

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load `tokenizer.json` (+ `tokenizer_config.json` for the BOS/EOS tokens) from a model directory."""
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise DecError(f"no tokenizer in {path}: expected {file}")
        from tokenizers import Tokenizer as FastTokenizer

        try:
            backend = FastTokenizer.from_file(str(file))
        except Exception as e:
            raise DecError(f"cannot read the tokenizer {file}: {e}; re-export it (tokenizer.save) or remove the file") from None
        special: dict[str, Any] = {}
        config = path / "tokenizer_config.json"
        if config.is_file():
            try:
                special = json.loads(config.read_text())
            except json.JSONDecodeError as e:
                raise DecError(f"{config} is not valid JSON ({e})") from None

        def token_id(key: str) -> int | None:
            token = special.get(key)
            if isinstance(token, dict):  # AddedToken serialized form
                token = token.get("content")
            return backend.token_to_id(token) if isinstance(token, str) else None

        return cls(backend, bos_token_id=token_id("bos_token"), eos_token_id=token_id("eos_token"), name=str(path))

    @classmethod
    def from_transformers(cls, tok: Any, name: str = "") -> Tokenizer:
        """Wrap a transformers tokenizer (AutoTokenizer.from_pretrained(...))."""
        return cls(tok, bos_token_id=getattr(tok, "bos_token_id", None), eos_token_id=getattr(tok, "eos_token_id", None), name=name)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size() if self._fast else len(self.backend)

    def vocab(self) -> dict[str, int]:
        return self.backend.get_vocab()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        if self._fast:
            return self.backend.encode(text, add_special_tokens=False).ids
        return self.backend.encode(text, add_special_tokens=False)

    def encode_prompt(self, text: str) -> list[int]:
        """Ids to prompt a model with: BOS (when the tokenizer has one) + encode(text)."""
        ids = self.encode(text)
        return ([self.bos_token_id] if self.bos_token_id is not None else []) + ids

    def decode(self, ids: list[int]) -> str:
        if self._fast:
            return self.backend.decode(ids, skip_special_tokens=True)
        return self.backend.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name or type(self.backend).__name__}, vocab={self.vocab_size})"


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """True when both map every token string to the same id."""
    return a.vocab() == b.vocab()
