"""Progress bars on stderr for the steps that take more than a couple of seconds: dequantizing a GGUF file,
quantizing a model, training; and a ticking status line for a step with no count (torch.compile of a round). Shown only when stderr is a terminal (never in pipes, logs or tests) and
`DECSPEC_PROGRESS` is not 0; `DECSPEC_PROGRESS=1` shows them anyway. tqdm draws them (it is installed with
decspec); without it the steps run silently.

    for tensor in progress(reader.tensors, "dequantizing"):
        ...
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

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


@contextmanager
def status(what: str) -> Iterator[None]:
    """A status line on stderr while the block runs ("decspec: compiling the round ... 12 s"), replaced by the time
    it took when it ends (when shown, as `progress`)."""
    if not enabled():
        yield
        return
    start, stop = time.perf_counter(), threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            sys.stderr.write(f"\rdecspec: {what} {time.perf_counter() - start:.0f} s")
            sys.stderr.flush()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        sys.stderr.write(f"\r\033[Kdecspec: {what}: {time.perf_counter() - start:.1f} s\n")
        sys.stderr.flush()
