"""`Decoder.stream`: the tokens and text of each row as rounds commit them.

    >>> import decspec
    >>> from decspec.stdlib.models.table import TableModel
    >>> dec = decspec.compile("specs/speculative.dec", target=TableModel.random(8, 1, seed=0), draft=TableModel.random(8, 1, seed=1))
    >>> stream = dec.stream([[1, 2, 3]], max_new_tokens=5, seed=0)
    >>> [t for delta in stream for t in delta.tokens] == stream.result.tokens[0] == dec.generate([[1, 2, 3]], max_new_tokens=5, seed=0).tokens[0]
    True

A round of a speculative decoder commits several tokens at once; each row's `Delta` carries all of them. With a
tokenizer, `Delta.text` is the text they complete (backends/detokenize.py): a character split over tokens comes
whole with the token that completes it, and with stop strings the last characters that may begin one are held
until they cannot. The deltas of a row add up to its Result: tokens to `result.tokens[row]`, text to
`result.text[row]`.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Generator, Sequence

from decspec.backends.detokenize import RowText
from decspec.backends.runtime import Commit, Result


@dataclass(frozen=True)
class Delta:
    """What one round added to one row.

    row: the prompt's index; round: the round (1-based) that committed it; tokens: the new ids; text: the text they
    complete ("" while a character or a possible stop string is incomplete; None without a tokenizer);
    finish_reason: None while the row runs, then "stop" (an EOS id or a stop string ended it) or "length"
    (max_new_tokens); stopped_by: the EOS id or the stop string, when finish_reason is "stop"; logprobs: of `tokens`,
    with stream(..., logprobs=True); top_logprobs: per token its alternatives (id, log p), with stream(..., top_logprobs=n).
    """

    row: int
    round: int
    tokens: list[int]
    text: str | None
    finish_reason: str | None = None
    stopped_by: int | str | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None


class HeldScores:
    """One row's logprobs (and their alternatives) as rounds commit them, handed out with the tokens a RowText
    releases: a token held back (an incomplete character, a possible stop string) keeps its score back too, and one
    a stop string cuts is never released. Used by Stream and by decspec serve's engine."""

    def __init__(self):
        self.scores: list[float] = []
        self.tops: list[list[tuple[int, float]]] = []

    def release(self, scores: list[float], tops: list | None, n: int) -> tuple[list[float], list | None]:
        """Hold a round's `scores` (and `tops`, or None when not asked for), then hand out the first `n` held."""
        self.scores += scores
        out, self.scores = self.scores[:n], self.scores[n:]
        if tops is None:
            return out, None
        self.tops += tops
        alts, self.tops = self.tops[:n], self.tops[n:]
        return out, alts


class Stream:
    """An iterator of `Delta`s (rows in order within a round); `result` is the Result once it is exhausted.

    Breaking out of the loop early is allowed: the generation stops there (`close()` does it explicitly). A Ctrl-C
    inside it raises `decspec.Interrupted`, whose `result` holds the whole rounds so far.
    """

    def __init__(self, loop: Generator[Commit, None, Result], texts: Sequence[RowText] | None):
        self._loop = loop
        self._texts = texts
        self._pending: deque[Delta] = deque()
        self._rounds = 0
        self._held: dict[int, HeldScores] = {}  # row -> its logprobs not released yet
        self.finish: dict[int, tuple[str, int | str | None]] = {}
        self.result: Result | None = None
        self._closed = False

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Delta:
        while not self._pending:
            if self.result is not None or self._closed:
                raise StopIteration
            commit = self._round()
            if commit is not None:
                self._pending.extend(self._deltas(commit))
        return self._pending.popleft()

    def run(self) -> Result:
        """Run to the end without making Deltas (what `generate` does) and return the Result."""
        while self.result is None:
            self._round()
        return self.result

    def _round(self) -> Commit | None:
        """The next round's Commit (its endings recorded), or None once the loop has returned the Result."""
        try:
            commit = next(self._loop)
        except StopIteration as end:
            self.result = self._finished(end.value)
            return None
        self._rounds += 1
        self.finish.update(commit.finished)
        return commit

    def close(self) -> None:
        """Stop generating (the rounds not run are never run; `result` stays None)."""
        self._closed = True
        self._pending.clear()
        self._loop.close()

    def _deltas(self, commit: Commit) -> list[Delta]:
        out = []
        for b, new in enumerate(commit.tokens):
            end = commit.finished.get(b)
            if self._texts is None:
                tokens, text = new, None
            else:
                tokens, text = self._texts[b].release(final=end is not None)
            scores = tops = None
            if commit.logprobs is not None:
                scores, tops = self._held.setdefault(b, HeldScores()).release(
                    commit.logprobs[b], None if commit.top is None else commit.top[b], len(tokens))
            if tokens or text or end is not None:
                out.append(Delta(b, self._rounds, tokens, text, *(end or (None, None)), scores, tops))
        return out

    def _finished(self, result: Result) -> Result:
        if self._texts is not None:
            result.text = [t.text for t in self._texts]
        result.finish_reason = [self.finish.get(b, (None, None))[0] for b in range(len(result.tokens))]
        result.stopped_by = [self.finish.get(b, (None, None))[1] for b in range(len(result.tokens))]
        return result


def row_texts(tokenizer: Any, stops: list[tuple[str, ...]] | None, rows: int) -> list[RowText]:
    """One RowText per row, decoding with the tokenizer, each with its stop strings."""
    return [RowText(tokenizer.decode, stops[b] if stops else ()) for b in range(rows)]
