"""What `generate` accepts, checked in one place before anything is allocated.

`generate_arguments` is the one check of `Decoder.generate`'s arguments; the runtime loops (runtime.py,
beam.py, exact/) call the same checkers for what they are handed directly. Every refusal is a DecError
that names the argument, what it got (type and a short excerpt) and what it takes:

- prompts: token ids (a [B, T] integer tensor or numpy array, one id list or a list of them, ids any
  integer type but bool, each in [0, vocab)), or text when the target has a tokenizer (a string or a list of
  strings, valid Unicode: a lone surrogate cannot be encoded), never both in one call;
- max_new_tokens: a positive integer (numpy integers too; not a bool or a float), or a list of one per prompt;
- seed: None or an integer in [-2**63, 2**64) (a 64-bit seed, signed or not; the batch's one generator), or a list
  of one such seed (or None) per prompt: each row then draws from a stream of its own (backends/draws.py);
- eos_token_id: None, one token id in [0, vocab), or a non-empty list (tuple, set) of them: a row ends at any of them;
- stop: None, a string, a list of strings (every row), or one such list per row: non-empty, valid Unicode, at most
  MAX_STOP_STRINGS per row; they need a tokenizer (stop strings are matched in the decoded text).

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
MAX_STOP_STRINGS = 1024  # stop strings per row (each round searches the new text for each of them)
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


@dataclass(frozen=True)
class GenerateArguments:
    prompts: list[list[int]]
    max_new_tokens: int | list[int]  # one per row when given so
    seed: int | None | tuple[int | None, ...]  # one per row when given so
    eos_token_id: tuple[int, ...] | None


def generate_arguments(input_ids: Any, max_new_tokens: Any, seed: Any, eos_token_id: Any, *, vocab_size: int,
                       tokenizer: Any = None, eos_from: str = "eos_token_id") -> GenerateArguments:
    """Every argument of `Decoder.generate`, checked and normalized. `eos_from` names where eos_token_id
    came from in messages (the target model's own, by default)."""
    rows = prompts(input_ids, vocab_size, tokenizer)
    counts = new_token_counts(max_new_tokens, len(rows))
    batch_seed, row_seeds = seeds(seed, len(rows))
    return GenerateArguments(rows, counts if isinstance(max_new_tokens, (list, tuple)) else counts[0],
                             batch_seed if row_seeds is None else row_seeds,
                             token_ids(eos_from, eos_token_id, vocab_size))


def _kind(value: Any) -> str:
    """'a bool', 'a float', 'an ndarray', ...: what a value is, for a message."""
    name = "bool" if isinstance(value, (bool, np.bool_)) else type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def shown(value: Any) -> str:
    """A value as a message quotes it: its repr, cut and escaped, and what it is: `'2' (a str)`."""
    return "None" if value is None else f"{excerpt(repr(value))} ({_kind(value)})"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def new_token_counts(value: Any, rows: int) -> list[int]:
    """max_new_tokens: one positive integer for every row, or a list (tuple) of one per row."""
    if isinstance(value, (list, tuple)):
        if len(value) != rows:
            raise DecError(f"max_new_tokens has {len(value)} counts for {rows} prompt{'s' * (rows != 1)}; give one count, or one per prompt")
        return [positive_int(f"max_new_tokens[{b}]", v) for b, v in enumerate(value)]
    return [positive_int("max_new_tokens", value)] * rows


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


def seeds(value: Any, rows: int) -> tuple[int | None, tuple[int | None, ...] | None]:
    """(the batch's seed, None) for one seed or None; (None, one seed or None per row) for a list of them."""
    if not isinstance(value, (list, tuple)):
        return seed_value(value), None
    if len(value) != rows:
        raise DecError(f"seed is a list of {len(value)} seeds for {rows} prompt{'s' * (rows != 1)}: give one per prompt "
                       "(None for a row without its own), or one integer for the whole batch")
    out = []
    for i, s in enumerate(value):
        try:
            out.append(seed_value(s))
        except DecError:
            raise DecError(f"seed {i} must be an integer in [-2**63, 2**64) (64 bits, signed or not) or None "
                           f"(got {shown(s)})") from None
    return None, tuple(out)


MAX_TOP_LOGPROBS = 20  # alternatives per token (OpenAI's chat limit)


def logprobs_request(logprobs: Any, top_logprobs: Any) -> tuple[bool, int]:
    """generate's and a served request's `logprobs` (True or False) and `top_logprobs` (an integer in
    [0, MAX_TOP_LOGPROBS]) checked -> (whether to score, how many alternatives); alternatives imply scoring."""
    if not isinstance(logprobs, bool):
        raise DecError(f"logprobs must be True or False (got {shown(logprobs)})")
    if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise DecError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}] (got {shown(top_logprobs)})")
    return logprobs or top_logprobs > 0, top_logprobs


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


def token_ids(name: str, value: Any, vocab_size: int) -> tuple[int, ...] | None:
    """None, or the token ids a row ends at: one id or a non-empty list, tuple or set of ids in [0, vocab_size)
    (eos_token_id; a model's generation_config may name several). Duplicates are dropped, the order kept.

        >>> token_ids("eos_token_id", [2, 0, 2], 8)
        (2, 0)
    """
    if value is None:
        return None
    if not isinstance(value, (list, tuple, set, frozenset)):
        if isinstance(value, (torch.Tensor, np.ndarray)):
            raise DecError(f"{name} must be a token id, a list of token ids or None (got {shown(value)}; pass .tolist())")
        return (token_id(name, value, vocab_size),)
    if not value:
        raise DecError(f"{name} is an empty {type(value).__name__}: give at least one token id, or None to generate without one")
    ids = []
    for i, v in enumerate(sorted(value) if isinstance(value, (set, frozenset)) and all(map(_is_int, value)) else value):
        if not _is_int(v):
            raise DecError(f"{name} must be a token id or a list of token ids; item {i} is {shown(v)}")
        token_id(name, v, vocab_size)
        ids.append(int(v))
    return tuple(dict.fromkeys(ids))


def stop_strings(stop: Any, rows: int) -> list[tuple[str, ...]] | None:
    """None, or per row its stop strings: `stop` is a string, a list of strings (every row), or a list of `rows`
    such lists (one per row). Each is a non-empty, encodable string; a row ends where its text first contains one.

        >>> stop_strings(["\\n\\n", "###"], 2)
        [('\\n\\n', '###'), ('\\n\\n', '###')]
    """
    if stop is None:
        return None
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)):
        raise DecError(f"stop must be a string, a list of strings or one list per prompt (got {shown(stop)})")
    per_row = bool(stop) and all(isinstance(s, (list, tuple)) for s in stop)
    if not per_row and any(isinstance(s, (list, tuple)) for s in stop):
        raise DecError("stop mixes strings and lists; give a list of strings (for every prompt) or one list of strings per prompt")
    if per_row and len(stop) != rows:
        raise DecError(f"stop has {len(stop)} lists of stop strings for {rows} prompt{'s' * (rows != 1)}; give one list per "
                       "prompt, or one list of strings for all")
    lists = [list(s) for s in stop] if per_row else [list(stop)] * rows
    for b, strings in enumerate(lists):
        where = f"stop[{b}]" if per_row else "stop"
        if len(strings) > MAX_STOP_STRINGS:
            raise DecError(f"{where} has {len(strings):,} stop strings; at most {MAX_STOP_STRINGS:,} are taken per prompt")
        for i, s in enumerate(strings):
            if not isinstance(s, str):
                raise DecError(f"{where}[{i}] is {shown(s)}; stop strings are str (a list of them per prompt at most)")
            if not s:
                raise DecError(f"{where}[{i}] is an empty string: it would match before any text; drop it")
            unicode_text(f"{where}[{i}]", s)
    return [tuple(dict.fromkeys(s)) for s in lists] if any(lists) else None


def unicode_text(what: str, text: str) -> None:
    """Refuse text that cannot be encoded (a lone surrogate: it cannot reach a tokenizer, nor be in decoded text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DecError(f"{what} is not valid Unicode text: {excerpt(repr(text[e.start:e.end]))} at character {e.start} "
                       "(a lone surrogate) cannot be encoded", hint="decode text with errors='replace' or fix its source") from None


def chat_prompts(messages: Any, tokenizer: Any) -> list[list[int]]:
    """The prompt ids of `messages`: one conversation (a list of {"role": str, "content": str} dicts) or a list of
    conversations (one per row), each rendered with the tokenizer's chat template and encoded as Hugging Face
    `apply_chat_template(..., tokenize=True, add_generation_prompt=True)` does (Tokenizer.encode_chat)."""
    if tokenizer is None:
        raise DecError("messages are rendered with the model's chat template, but the target model carries no tokenizer; "
                       "pass input_ids")
    if not isinstance(messages, (list, tuple)):
        raise DecError("messages must be a list of {'role': ..., 'content': ...} dicts (one conversation) or a list of "
                       f"such lists (one per prompt) (got {shown(messages)})")
    if not messages:
        raise DecError("messages is empty: give at least one message, e.g. [{'role': 'user', 'content': 'Hi'}]")
    batched = all(isinstance(c, (list, tuple)) for c in messages)
    conversations = list(messages) if batched else [messages]
    for r, conversation in enumerate(conversations):
        where = f"messages[{r}]" if batched else "messages"
        if not conversation:
            raise DecError(f"{where} is empty: give at least one message, e.g. [{{'role': 'user', 'content': 'Hi'}}]")
        for i, m in enumerate(conversation):
            if not isinstance(m, Mapping):
                raise DecError(f"{where}[{i}] is {shown(m)}, not a message: write {{'role': 'user', 'content': '...'}}")
            role, content = m.get("role"), m.get("content")
            if not isinstance(role, str) or not role:
                raise DecError(f"{where}[{i}] has role {shown(role)}; a message's role is a non-empty string "
                               "('system', 'user', 'assistant')")
            if not isinstance(content, str):
                raise DecError(f"{where}[{i}] ({excerpt(role)}) has content {shown(content)}; a message's content is a string")
            unicode_text(f"{where}[{i}]'s role", role)
            unicode_text(f"{where}[{i}]'s content", content)
    return [list(tokenizer.encode_chat([dict(m) for m in conversation])) for conversation in conversations]


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
        unicode_text(f"prompt {b}", text)
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


def models_device(models: Mapping[str, Any]) -> torch.device:
    """The device the models run on; they must share it (a DecError names them otherwise)."""
    devices = {role: model_device(m) for role, m in models.items()}
    if len(set(devices.values())) > 1:
        raise DecError("the models are on different devices (" + ", ".join(f"{r}: {d}" for r, d in devices.items())
                       + "); a decoder runs on one device", hint="move every model to the same device, e.g. model.to('cuda')")
    return next(iter(devices.values()), torch.device("cpu"))


def model_device(model: Any) -> torch.device:
    """A model's device: its `device`, else its first parameter's or buffer's (a module), else the model it views
    (`.model`), else its logits table's; the CPU when it holds no tensor."""
    device = getattr(model, "device", None)
    if isinstance(device, (torch.device, str)):
        return torch.device(device)
    if isinstance(model, torch.nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            return t.device
    inner = getattr(model, "model", None)
    if inner is not None and inner is not model:
        return model_device(inner)
    table = getattr(model, "logits", None)
    return table.device if isinstance(table, torch.Tensor) else torch.device("cpu")
