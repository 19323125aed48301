"""Built token indexes, kept in memory (an LRU) and on disk (one `.npz` per index), by a content hash of
(kind, normalized source, vocabulary hash, EOS id, `CODE_VERSION`).

    index = CACHE.get_or_build(key, lambda: TokenIndex.build(dfa, vocab, eos_id))

The disk cache lives in `$DECSPEC_CACHE_DIR` when it is set, else in `grammars/` of the user cache
(`decspec.user_cache`, `~/.cache/decspec` by default). Files are written atomically (a temporary file, then
a rename) and read back only when the current user alone could have written them (`open_private`), as
plain arrays (`allow_pickle=False`); one that cannot be read back is rebuilt and rewritten, never an error.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from decspec.stdlib.grammars.index import TokenIndex
from decspec.user_cache import cache_dir as user_cache_dir
from decspec.user_cache import open_private, write_private

CODE_VERSION = "2"  # bump when the regex semantics or the index layout change: old files stop matching


def cache_dir() -> Path:
    env = os.environ.get("DECSPEC_CACHE_DIR")
    return Path(env) if env else user_cache_dir() / "grammars"


def vocab_hash(vocab: list[bytes | None]) -> str:
    """A hash of every token's bytes (and which ones are special), in id order."""
    h = hashlib.sha256()
    for token in vocab:
        h.update(b"\xff" if token is None else len(token).to_bytes(4, "little") + token)
    return h.hexdigest()


def cache_key(kind: str, source: str, vocab_digest: str, eos_id: int | None) -> str:
    payload = json.dumps([kind, source, vocab_digest, eos_id, CODE_VERSION])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class IndexCache:
    """An in-process LRU of `maxsize` indexes in front of the disk cache; counts hits for tests and logs.
    Thread-safe: one lock around each lookup (a build under it, so two threads never build one index twice)."""

    def __init__(self, maxsize: int = 32):
        self.lock = threading.RLock()
        self.maxsize = maxsize
        self.memory: OrderedDict[str, TokenIndex] = OrderedDict()
        self.stats = {"memory": 0, "disk": 0, "built": 0}

    def get_or_build(self, key: str, build: Callable[[], TokenIndex], disk: bool = True) -> TokenIndex:
        with self.lock:
            return self._get_or_build(key, build, disk)

    def _get_or_build(self, key: str, build: Callable[[], TokenIndex], disk: bool) -> TokenIndex:
        if key in self.memory:
            self.memory.move_to_end(key)
            self.stats["memory"] += 1
            return self.memory[key]
        path = cache_dir() / f"{key}.npz"
        index = self.load(path) if disk else None
        if index is not None:
            self.stats["disk"] += 1
        else:
            index = build()
            self.stats["built"] += 1
            if disk:
                self.save(path, index)
        self.memory[key] = index
        while len(self.memory) > self.maxsize:
            self.memory.popitem(last=False)
        return index

    @staticmethod
    def load(path: Path) -> TokenIndex | None:
        with open_private(path) as f:
            if f is None:  # absent, or another user could have written it
                return None
            try:
                with np.load(f, allow_pickle=False) as arrays:
                    return TokenIndex.from_arrays({k: arrays[k] for k in arrays.files})
            except Exception:  # truncated, corrupt or from an older layout: rebuild
                return None

    @staticmethod
    def save(path: Path, index: TokenIndex) -> None:
        # a folder others can write, or a read-only or full disk, only costs the rebuild next time
        write_private(path, lambda f: np.savez(f, **index.to_arrays()))

    def clear(self) -> None:
        with self.lock:
            self.memory.clear()


CACHE = IndexCache()
