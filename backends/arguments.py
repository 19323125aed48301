"""What `generate` accepts, checked in one place before anything is allocated.

`generate_arguments` is the one check of `Decoder.generate`'s arguments; the runtime loops (runtime.py,
beam.py, exact/) call the same checkers for what they are handed directly. Every refusal is a DecError
that names the argument, what it got (type and a short excerpt) and what it takes:

- prompts: token ids (a [B, T] integer tensor or numpy array, one id list or a list of them, ids any
  integer type but bool, each in [0, vocab)), or text when the target has a tokenizer (a string or a list of
  strings, valid Unicode: a lone surrogate cannot be encoded), never both in one call;
- max_new_tokens: a positive integer (numpy integers too; not a bool or a float);
- seed: None or an integer in [-2**63, 2**64) (a 64-bit seed, signed or not);
- eos_token_id: None or one token id in [0, vocab).

`context_capacity` bounds the context every call preallocates (the committed tokens and each model's cache,
one row per prompt): `MAX_POSITIONS` per row for models with no position limit of their own (table models),
`MAX_CONTEXT` positions over all rows.

    >>> generate_arguments([[1, 2]], 4, None, None, vocab_size=8).prompts
    [[1, 2]]
    >>> generate_arguments([[1, True]], 4, None, None, vocab_size=8)
    Traceback (most recent call last):
    ...
    decspec.dsl.diagnostics.DecError: error: prompt 0 has True (a bool) at position 1, not a token id
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from decspec.dsl.diagnostics import DecError, excerpt

MAX_POSITIONS = 1 << 20  # context positions per row, for models without max_positions (8 MiB per int64 buffer row)
MAX_CONTEXT = 1 << 24  # context positions over all rows (128 MiB per int64 buffer: the context, each cache's tokens)
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


@dataclass(frozen=True)
class GenerateArguments:
    prompts: list[list[int]]
    max_new_tokens: int
    seed: int | None
    eos_token_id: int | None


def generate_arguments(input_ids: Any, max_new_tokens: Any, seed: Any, eos_token_id: Any, *, vocab_size: int,
                       tokenizer: Any = None, eos_from: str = "eos_token_id") -> GenerateArguments:
    """Every argument of `Decoder.generate`, checked and normalized. `eos_from` names where eos_token_id
    came from in messages (the target model's own, by default)."""
    return GenerateArguments(prompts(input_ids, vocab_size, tokenizer), positive_int("max_new_tokens", max_new_tokens),
                             seed_value(seed), token_id(eos_from, eos_token_id, vocab_size))


def _kind(value: Any) -> str:
    """'a bool', 'a float', 'an ndarray', ...: what a value is, for a message."""
    name = "bool" if isinstance(value, (bool, np.bool_)) else type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def shown(value: Any) -> str:
    """A value as a message quotes it: its repr, cut and escaped, and what it is: `'2' (a str)`."""
    return "None" if value is None else f"{excerpt(repr(value))} ({_kind(value)})"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value: Any) -> int:
    """A count argument (max_new_tokens): an integer >= 1, numpy integers included."""
    if not _is_int(value):
        raise DecError(f"{name} must be a positive integer (got {shown(value)})")
    if value < 1:
        raise DecError(f"{name} must be a positive integer (got {int(value)})")
    return int(value)


def seed_value(value: Any) -> int | None:
    """None, or a 64-bit seed: an integer in [-2**63, 2**64)."""
    if value is None:
        return None
    if not _is_int(value) or not -2**63 <= value < 2**64:
        raise DecError(f"seed must be an integer in [-2**63, 2**64) (64 bits, signed or not) or None (got {shown(value)})")
    return int(value)


def token_id(name: str, value: Any, vocab_size: int) -> int | None:
    """None, or one token id in [0, vocab_size) (eos_token_id)."""
    if value is None:
        return None
    if not _is_int(value):
        many = " one token id or None" if isinstance(value, (list, tuple, set, torch.Tensor, np.ndarray)) else ""
        raise DecError(f"{name} must be{many or ' a token id (an integer) or None'} (got {shown(value)})")
    if not 0 <= value < vocab_size:
        raise DecError(f"{name} {int(value)} is outside the model's vocabulary [0, {vocab_size})")
    return int(value)


def prompts(input_ids: Any, vocab_size: int, tokenizer: Any = None) -> list[list[int]]:
    """Prompts as lists of ids: from a [B, T] (or [T]) integer tensor or array, a ragged list of id lists,
    one id list, or, with a tokenizer, a string or a list of strings (encoded with the tokenizer's BOS)."""
    if isinstance(input_ids, (bytes, bytearray)):
        raise DecError(f"input_ids is {type(input_ids).__name__}: pass text as a str (decode it first) or token ids")
    rows = _texts(input_ids, tokenizer)
    if rows is None:
        rows = _id_rows(input_ids)
    if not rows:
        raise DecError("input_ids is empty: give at least one prompt")
    out = []
    for b, row in enumerate(rows):
        if not row:
            raise DecError(f"prompt {b} is empty: give at least one token (e.g. a BOS token)")
        for i, t in enumerate(row):
            if not _is_int(t):
                why = "" if isinstance(t, (bool, np.bool_)) else " (an integer)"
                raise DecError(f"prompt {b} has {shown(t)} at position {i}, not a token id{why}")
            if not 0 <= t < vocab_size:
                raise DecError(f"prompt {b} has token id {int(t)} outside the model's vocabulary [0, {vocab_size})")
        out.append([int(t) for t in row])
    return out


def _texts(input_ids: Any, tokenizer: Any) -> list[list[int]] | None:
    """The encoded prompts when input_ids is text (None when it holds no text at all)."""
    texts = [input_ids] if isinstance(input_ids, str) else input_ids
    if not isinstance(texts, (list, tuple)) or not any(isinstance(t, str) for t in texts):
        return None
    if not all(isinstance(t, str) for t in texts):
        b = next(i for i, t in enumerate(texts) if not isinstance(t, str))
        a = next(i for i, t in enumerate(texts) if isinstance(t, str))
        raise DecError(f"input_ids mixes text (prompt {a}) and {_kind(texts[b])} (prompt {b}); give every "
                       "prompt as text or every prompt as token ids")
    if tokenizer is None:
        raise DecError("input_ids holds text, but the target model carries no tokenizer; pass token ids "
                       "([B, T] tensor or lists of ints)")
    for b, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DecError(f"prompt {b} is not valid Unicode text: {excerpt(repr(text[e.start:e.end]))} at character {e.start} "
                           "(a lone surrogate) cannot be encoded", hint="decode text with errors='replace' or fix its source") from None
    return [list(tokenizer.encode_prompt(t)) for t in texts]


def _id_rows(input_ids: Any) -> list:
    """Rows of (unchecked) ids from a tensor, an array or nested sequences."""
    if isinstance(input_ids, (torch.Tensor, np.ndarray)):
        return _array_rows(input_ids, "input_ids")
    if isinstance(input_ids, Sequence) and not isinstance(input_ids, str):
        if not input_ids:
            return []
        if all(not isinstance(r, (Sequence, torch.Tensor, np.ndarray)) for r in input_ids):
            return [list(input_ids)]  # one prompt; its items are checked as ids
        rows = []
        for b, r in enumerate(input_ids):
            if isinstance(r, (torch.Tensor, np.ndarray)):
                (row,) = _array_rows(r.reshape(1, -1) if r.ndim <= 1 else r, f"prompt {b}")
                rows.append(row)
            elif isinstance(r, Sequence) and not isinstance(r, (str, bytes, bytearray)):
                rows.append(list(r))
            else:
                raise DecError(f"input_ids mixes token ids and prompts: item {b} is {shown(r)}; give one list of ids "
                               "or a list of id lists")
        return rows
    raise DecError(f"input_ids must be a [B, T] tensor, a list of token-id lists, or one list of token ids (got {shown(input_ids)})")


def _array_rows(x: Any, name: str) -> list[list[int]]:
    dtype = x.dtype
    integer = dtype in _INT_DTYPES if isinstance(x, torch.Tensor) else np.issubdtype(dtype, np.integer)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or not integer:
        raise DecError(f"{name} must be an integer {type(x).__name__} [B, T] of token ids (got {dtype} of shape {tuple(x.shape)})")
    return x.tolist()


def context_capacity(rows: int, longest: int, max_new_tokens: int, extra: int, models: Mapping[str, Any],
                     what: str = "max_new_tokens") -> int:
    """Positions to preallocate per row: the longest prompt, its new tokens and `extra` (a round's drafts and
    padding), rounded up to a multiple of 128 (a static-shape bucket: compiled rounds see the same cache shapes
    across calls). Refused, before anything is allocated, past a model's own max_positions, past MAX_POSITIONS
    per row, or past MAX_CONTEXT over all rows."""
    for role, model in models.items():
        limit = getattr(model, "max_positions", None)
        if limit is not None and longest + max_new_tokens > limit:
            raise DecError(f"the longest prompt ({longest} tokens) plus {what} ({max_new_tokens}) exceeds the {limit} "
                           f"positions of model '{role}'; shorten the prompt or lower {what}")
    capacity = -(-(longest + max_new_tokens + extra) // 128) * 128
    if capacity > MAX_POSITIONS and all(getattr(m, "max_positions", None) is None for m in models.values()):
        raise DecError(f"the longest prompt ({longest} tokens) plus {what} ({max_new_tokens}) needs {capacity:,} context "
                       f"positions per row; decspec preallocates at most {MAX_POSITIONS:,} for models with no position "
                       f"limit of their own", hint=f"lower {what} (at most {MAX_POSITIONS - extra - longest:,} here)")
    if rows * capacity > MAX_CONTEXT:
        raise DecError(f"{rows} rows x {capacity:,} context positions = {rows * capacity:,} positions to preallocate (the "
                       f"context and each model's cache); the limit is {MAX_CONTEXT:,}",
                       hint=f"generate fewer rows at a time or lower {what}")
    return capacity
