"""Text in, text out: one small wrapper over a Hugging Face `tokenizers.Tokenizer` or a `transformers` tokenizer.

    tok = Tokenizer.from_dir("stdlib/models/reference/target")
    ids = tok.encode_prompt("def fibonacci(n):")     # special tokens added as the model's own HF tokenizer adds them
    text = tok.decode(ids)                            # special tokens skipped

BOS. Whether a prompt starts with BOS is the tokenizer's own rule, exactly as in Hugging Face:
`tokenizer.json`'s post-processor (a `TemplateProcessing` that puts BOS first, or none), i.e. what
`AutoTokenizer.from_pretrained(dir)(text).input_ids` returns. SmolLM2 adds none; the shipped
reference tokenizer puts `<|endoftext|>` first (as its training data had it).

Models that carry a tokenizer (`model.tokenizer`) let `Decoder.generate` take strings.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from decspec.dsl.diagnostics import DecError


class Tokenizer:
    """ids <-> text. `backend` is a `tokenizers.Tokenizer` or a transformers `PreTrainedTokenizerBase`."""

    def __init__(self, backend: Any, *, bos_token_id: int | None = None, eos_token_id: int | None = None, name: str = "",
                 chat_template: str | None = None):
        self.backend = backend
        self.chat_template = chat_template
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

        template = special.get("chat_template")
        return cls(backend, bos_token_id=token_id("bos_token"), eos_token_id=token_id("eos_token"), name=str(path),
                   chat_template=template if isinstance(template, str) else None)

    @classmethod
    def from_transformers(cls, tok: Any, name: str = "") -> Tokenizer:
        """Wrap a transformers tokenizer (AutoTokenizer.from_pretrained(...))."""
        template = getattr(tok, "chat_template", None)
        return cls(tok, bos_token_id=getattr(tok, "bos_token_id", None), eos_token_id=getattr(tok, "eos_token_id", None), name=name,
                   chat_template=template if isinstance(template, str) else None)

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
        """Ids to prompt a model with: `encode(text)` plus the special tokens the tokenizer itself adds
        (BOS for tokenizers whose post-processor adds one), as HF's `tokenizer(text).input_ids`."""
        if self._fast:
            return self.backend.encode(text, add_special_tokens=True).ids
        return self.backend.encode(text, add_special_tokens=True)

    def apply_chat_template(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for a conversation, rendered with the model's chat template (as HF's
        `apply_chat_template(..., tokenize=False)`: a sandboxed Jinja environment).

        >>> tok.apply_chat_template([{"role": "user", "content": "Hi"}])   # doctest: +SKIP
        '<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        if not self.chat_template:
            raise DecError(f"the tokenizer {self.name or ''} has no chat template (tokenizer_config.json has no chat_template); "
                           "pass the prompt as plain text")
        if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                      and isinstance(m.get("content"), str) for m in messages):
            raise DecError("messages must be a list of {'role': str, 'content': str} dicts")
        from jinja2 import TemplateError

        env = _chat_environment()
        token = (lambda i: self.backend.id_to_token(i) if self._fast else self.backend.convert_ids_to_tokens(i))
        try:
            return env.from_string(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=token(self.bos_token_id) if self.bos_token_id is not None else "",
                eos_token=token(self.eos_token_id) if self.eos_token_id is not None else "")
        except TemplateError as e:
            raise DecError(f"the chat template of {self.name or 'the tokenizer'} failed: {e}") from None
        except Exception as e:  # a template that is not valid for these messages (a TypeError inside Jinja, ...)
            raise DecError(f"the chat template of {self.name or 'the tokenizer'} failed: {type(e).__name__}: {e}") from None

    def encode_chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        """The prompt ids of a conversation, as Hugging Face's `apply_chat_template(messages, tokenize=True)`: the
        rendered template encoded with no special tokens added (a BOS comes only from the template itself, so a
        tokenizer whose post-processor adds one does not get two)."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt))

    def decode(self, ids: list[int]) -> str:
        if self._fast:
            return self.backend.decode(ids, skip_special_tokens=True)
        return self.backend.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name or type(self.backend).__name__}, vocab={self.vocab_size})"


def _chat_environment():
    """The Jinja environment chat templates render in, as Hugging Face's: sandboxed, trim_blocks and lstrip_blocks,
    `{% break %}`/`{% continue %}`, `raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII text, and
    `{% generation %}` blocks rendered as their body."""
    import json
    from datetime import datetime

    from jinja2 import TemplateError, nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):  # HF marks assistant text with it (to mask it in training); rendering keeps the body
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return env


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """True when both map every token string to the same id."""
    return a.vocab() == b.vocab()
