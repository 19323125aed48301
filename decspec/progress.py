"""Progress bars on stderr for the steps that take more than a couple of seconds: dequantizing a GGUF file,
quantizing a model, training. Shown only when stderr is a terminal (never in pipes, logs or tests) and
`DECSPEC_PROGRESS` is not 0; `DECSPEC_PROGRESS=1` shows them anyway. tqdm draws them (it is installed with
decspec); without it the steps run silently.

    for tensor in progress(reader.tensors, "dequantizing"):
        ...
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    setting = os.environ.get("DECSPEC_PROGRESS", "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(items: Iterable[T], what: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """`items`, with a bar on stderr saying `what` while they are consumed (or `items` itself, when not shown)."""
    if not enabled():
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=f"decspec: {what}", total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
