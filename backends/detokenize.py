"""Text as rounds commit tokens: incremental detokenization and stop strings, one row at a time.

A speculative round commits several tokens at once, and a byte-level tokenizer may spread one character over
several tokens. `Detokenizer` turns a row's ids into text as they come and never emits half a character;
`RowText` adds the row's stop strings (the row ends where its text first contains one, cut exactly there) and
what a stream has released so far. The runtime loop (runtime.py) feeds each row the tokens a round committed.

Tokens and text stay consistent: `ends[k]` is the length of the text of the row's first k tokens, and a
character position maps to the fewest tokens whose text reaches it. A stop string cuts the text right before
it; the tokens kept are the fewest that cover that text. A token that straddles the cut (its text begins
before the stop string and runs into it) is kept: then `decode(tokens)` is the text plus the straddling
token's part of the stop string. Otherwise `decode(tokens) == text`. Tokens after the cut, in the same
round or (held back) an earlier one, are dropped.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Sequence

REPLACEMENT = "\ufffd"  # what a decoder makes of bytes that do not (yet) form a character


class Detokenizer:
    """One row's ids -> text, a token at a time (vLLM's prefix/read offsets): the newest tokens are decoded
    together with the tokens since the last clean cut and only the difference is new text, so a tokenizer that
    decodes a token differently at the start of a sequence (SentencePiece's leading space) gives the text of
    the whole row; while the decoded text ends with U+FFFD (a character whose bytes have not all come) nothing
    is emitted, and the token that completes it emits the whole character.

        >>> d = Detokenizer(lambda ids: bytes(ids).decode("utf-8", "replace"))
        >>> [d.add(t) for t in "é!".encode()]
        ['', 'é', '!']
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.ids: list[int] = []
        self.text = ""
        self._prefix = self._read = 0  # ids[_prefix:_read]: the tokens of the last piece emitted (its context)

    def add(self, token: int) -> str:
        """The text `token` completes ("" while a character is incomplete)."""
        self.ids.append(token)
        before = self.decode(self.ids[self._prefix:self._read])
        after = self.decode(self.ids[self._prefix:])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""
        piece = after[len(before):]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += piece
        return piece

    def finish(self) -> str:
        """At the row's end, the text still held: bytes that never completed a character (U+FFFD), or a genuine
        U+FFFD the model wrote, as decoding the whole row gives them."""
        whole = self.decode(self.ids)
        if len(whole) <= len(self.text) or not whole.startswith(self.text):
            return ""
        piece, self.text = whole[len(self.text):], whole
        return piece


class RowText:
    """One row's text, its stop strings, and what a stream has released of it.

    feed(ids, last) takes the tokens a round committed (last: the row ends with them, by EOS or max_new_tokens)
    and returns the stop string that ended the row, if one did. release(final) gives the tokens and text not
    yet released: everything but the last `hold` characters (a stop string may begin there) and the tokens
    whose characters are incomplete; all of it once the row has ended.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()):
        self.detokenizer = Detokenizer(decode)
        self.stops = tuple(stops)
        self.hold = max(map(len, self.stops), default=1) - 1  # characters that may begin a stop string not yet whole
        self.ends = [0]  # ends[k]: characters of text after the first k tokens
        self.cut: tuple[int, str] | None = None  # (character, stop string) once a stop string matched
        self._searched = 0  # text before this index has been searched
        self._released = (0, 0)  # (tokens, characters)

    @property
    def ids(self) -> list[int]:
        return self.detokenizer.ids

    @property
    def text(self) -> str:
        """The row's text so far, cut before the stop string that ended it."""
        text = self.detokenizer.text
        return text if self.cut is None else text[:self.cut[0]]

    @property
    def kept(self) -> int:
        """Tokens the row keeps: the fewest that cover its text when a stop string cut it, else all."""
        return len(self.ids) if self.cut is None else bisect_left(self.ends, self.cut[0])

    def feed(self, ids: Sequence[int], last: bool = False) -> str | None:
        if self.cut is not None:
            return None
        for t in ids:
            self.detokenizer.add(t)
            self.ends.append(len(self.detokenizer.text))
        if last and self.detokenizer.finish():
            self.ends[-1] = len(self.detokenizer.text)  # the last token completes what was held
        return self._search()

    def _search(self) -> str | None:
        """The earliest stop string in the text (the first listed on a tie); a match begins at most `hold`
        characters before the text searched last time, else it would have matched then."""
        if not self.stops:
            return None
        text = self.detokenizer.text
        start = max(0, self._searched - self.hold)
        self._searched = len(text)
        found = [(i, s) for s in self.stops if (i := text.find(s, start)) >= 0]
        if not found:
            return None
        self.cut = min(found, key=lambda f: f[0])
        return self.cut[1]

    def release(self, final: bool = False) -> tuple[list[int], str]:
        """(tokens, text) not released before. final: the row has ended (fed with last=True, or cut)."""
        text = self.text
        if self.cut is not None or final:
            chars, tokens = len(text), self.kept
        else:  # the text may still run into a stop string: hold its last `hold` characters
            chars = max(self._released[1], len(text) - self.hold)
            tokens = bisect_left(self.ends, chars)  # the fewest tokens covering it: incomplete characters stay
        tokens = max(tokens, self._released[0])
        (t0, c0), self._released = self._released, (tokens, chars)
        return self.ids[t0:tokens], text[c0:chars]
