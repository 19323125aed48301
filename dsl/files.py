"""Reading the files a spec names: the spec itself, its imports, `lark_file(...)` grammars and
`json_schema(...)` schemas. A spec may come from someone else, so what it points at is read with limits:
a regular file only (never a directory, device or pipe: `/dev/zero` is refused, not read), at most
`MAX_BYTES`, UTF-8 text without NUL bytes. A file that is not one says what was expected and quotes
nothing of what it holds.

    >>> read_text(Path("/dev/zero"), "a .dec spec")
    Traceback (most recent call last):
    ...
    decspec.dsl.files.UnreadableFile: /dev/zero is a character device, not a .dec spec
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_BYTES = 4 << 20  # 4 MiB: specs, grammars and schemas are kilobytes; a bigger file is a wrong path
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"))


class UnreadableFile(Exception):
    """Why a file a spec names cannot be used; the message never quotes the file's contents."""


def read_text(path: Path, expected: str) -> str:
    """The text of the file at `path`, which should be `expected` ("a .dec spec", "a Lark grammar", ...)."""
    try:
        _check_regular(os.stat(path), path, expected)  # before opening: opening a device can have effects
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise UnreadableFile(f"no such file {path}") from None
    except (OSError, ValueError) as e:
        raise UnreadableFile(f"cannot open {path}: {getattr(e, 'strerror', None) or type(e).__name__}") from None
    with os.fdopen(fd, "rb") as f:
        _check_regular(os.fstat(fd), path, expected)  # the file opened, in case it was swapped since the stat
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise UnreadableFile(f"{path} is larger than {MAX_BYTES >> 20} MiB, too large for {expected}")
    if b"\0" in data:
        raise UnreadableFile(f"{path} is a binary file, not {expected}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableFile(f"{path} is not UTF-8 text, so not {expected}") from None


def _check_regular(st: os.stat_result, path: Path, expected: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        raise UnreadableFile(f"{path} is {kind}, not {expected}")
