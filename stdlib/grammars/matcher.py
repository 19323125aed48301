"""The matcher protocol: what grammar-constrained decoding needs from a compiled grammar.

The decoder's grammar ops (`grammar_state`, `grammar_mask`; see compiler/ops.py) use nothing else, so any
object with these members can constrain a decoder: the regex / JSON Schema / choice `TokenIndex`
(index.py) and the Lark CFG matcher (cfg.py) alike. States are interned ints; a matcher never mutates on a
query, so a state is a value the runtime can keep, copy and roll back for free.

    >>> from decspec.stdlib.grammars import compile_grammar
    >>> m: Matcher = compile_grammar("choice", ["ab", "b"], [b"a", b"b", None], eos_id=2, cache=False)
    >>> isinstance(m, Matcher), m.mask([m.start]).tolist()
    (True, [[True, True, False]])
    >>> s = m.next_state([m.start], [0])            # after "a"
    >>> m.allowed(int(s[0])).tolist(), m.is_accepting(int(s[0]))
    ([1], False)
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Matcher(Protocol):
    """A grammar over one vocabulary, as decoding uses it.

    start: the state before any token. vocab_size: the ids it knows (a model's logits may be wider; the
    ids past vocab_size are never allowed). eos_id: the end-of-sequence id, allowed exactly in accepting
    states (None: no EOS; decoding then refuses the grammar). num_states: states known so far (a CFG
    matcher may intern more as it goes).
    """

    start: int
    vocab_size: int
    eos_id: int | None

    @property
    def num_states(self) -> int: ...

    def mask(self, states: Any) -> torch.Tensor:
        """bool [B, V]: the tokens allowed in each of `states` (int [B]); EOS exactly in accepting states."""

    def next_state(self, states: Any, tokens: Any) -> Any:
        """The state after each token (int [B] each; a tensor in, a tensor out): -1 where the token is
        not allowed; EOS keeps the state."""

    def is_accepting(self, state: int) -> bool:
        """Whether the tokens that led to `state` spell a string of the language."""

    def allowed(self, state: int) -> Any:
        """The token ids allowed in `state`, ascending."""
