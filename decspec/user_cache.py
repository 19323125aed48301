"""The user cache: where decspec keeps what it builds or downloads once (the .dec parser's tables, grammar
indexes, pulled models), and the checks that make reading it back safe.

    folder = private_dir(cache_dir() / "parser")      # created 0700; None when it is not private
    with open_private(folder / "dec.tables") as f:    # None unless the current user wrote the file
        ...
    write_private(folder / "dec.tables", f.write)     # atomic, mode 0600; a failure only costs a rebuild

The cache is `$DECSPEC_CACHE`, else `$XDG_CACHE_HOME/decspec`, else `~/.cache/decspec`. A folder is
private when it is a directory the current user owns that no one else can write; a file is read back only
when it is a regular file (not a symlink) in a private folder, owned by the current user and writable by no
one else, checked on the open file so that nothing can be swapped in between. Only the user (or root) can
write such a file, so another user who can write a shared cache path cannot make decspec load their data.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


def cache_dir() -> Path:
    """The root of decspec's user cache (folders under it are created 0700 on first use)."""
    root = os.environ.get("DECSPEC_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "decspec")
    return Path(root).expanduser()


def _private(st: os.stat_result) -> bool:
    """Owned by the current user and writable by no one else (no uid to compare on Windows: never)."""
    getuid = getattr(os, "getuid", None)
    return getuid is not None and st.st_uid == getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def is_private(folder: Path) -> bool:
    """Whether `folder` is a directory the current user owns and no one else can write."""
    try:
        st = os.stat(folder)
    except (OSError, ValueError):
        return False
    return stat.S_ISDIR(st.st_mode) and _private(st)


def private_dir(folder: Path) -> Path | None:
    """`folder`, created with its missing parents (each 0700) if need be; None when it cannot be made or is
    not private (another user owns it, others can write it, it is not a directory)."""
    missing: list[Path] = []
    at = Path(folder)
    while not os.path.lexists(at) and at.parent != at:
        missing.append(at)
        at = at.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:  # made meanwhile by another process: checked below like any other
            pass
        except (OSError, ValueError):
            return None
    return Path(folder) if is_private(folder) else None


@contextlib.contextmanager
def open_private(path: Path) -> Iterator[BinaryIO | None]:
    """`path` opened for reading when the current user alone could have written it, else None."""
    f = None
    if is_private(path.parent):
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except (OSError, ValueError):
            fd = None
        if fd is not None:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and _private(st):
                f = os.fdopen(fd, "rb")
            else:
                os.close(fd)
    try:
        yield f
    finally:
        if f is not None:
            f.close()


def write_private(path: Path, write: Callable[[BinaryIO], object]) -> bool:
    """Write `path` atomically (a temporary file of mode 0600, then a rename) in its private folder, which is
    created if need be. False when that folder is not private or the disk refuses: the caller rebuilds next time."""
    if private_dir(path.parent) is None:
        return False
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
        tmp = None
        return True
    except OSError:
        return False
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
