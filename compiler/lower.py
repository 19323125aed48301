"""Lowering: a checked Spec becomes one round graph (propose -> verify -> commit).

The core only wires slots together; every op sequence comes from a component's own `lower`
function, so adding a component never touches this file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from decspec.compiler.builder import Builder
from decspec.compiler.ir import CTX, Graph, Value
from decspec.compiler.text import Record
from decspec.dsl.diagnostics import DecError
from decspec.dsl.spec import Instance, Spec


@dataclass
class Proposal:
    """What a draft source hands the verifier: tokens [B,K], their draft probs [B,K,V], counts [B]."""

    tokens: Value
    probs: Value
    count: Value
    max: int


class Lowering:
    """The state components lower into: the builder, the sampler pipeline, the exit policy."""

    def __init__(self, spec: Spec):
        self.spec = spec
        params = tuple((k, v) for k, v in spec.params if isinstance(v, (bool, int, float, str)))
        self.b = Builder("round", attrs=(("spec", spec.name),) + params)
        self.sampler: tuple[Instance, ...] = tuple(spec.slot("sampler", ()))
        self.stop: Instance | None = spec.slot("stop")
        self.grammar: Instance | None = spec.slot("grammar")

    def role(self, model: Instance) -> str:
        return model.arg("name")

    def model_logits(self, inputs: list[Value], model: str, last: bool = True) -> Value:
        """model_call over ctx ++ ext[:, :n], masked by the grammar when the spec has one: the logits
        every sampler (and exit policy) sees. The grammar state is read at the same positions."""
        logits = self.b.emit("model_call", inputs, model=model, last=last)[0]
        if self.grammar is None:
            return logits
        with self.b.located(self.grammar.span, self.grammar.name) as b:
            states = b.emit("grammar_state", inputs, grammar="grammar", last=last)[0]
            return b.emit("grammar_mask", [logits, states], grammar="grammar")[0]

    def probs(self, logits: Value) -> Value:
        """softmax(sampler pipeline(logits)): the distribution every model is sampled from."""
        if not self.sampler:
            return self.b.emit("softmax", [logits])[0]
        stages = tuple(Record(s.name, tuple(s.args)) for s in self.sampler)
        with self.b.located(self.sampler[0].span, "sampler") as b:
            logits = b.emit("logits_transform", [logits], stages=stages)[0]
            return b.emit("softmax", [logits])[0]

    def sample(self, probs: Value) -> Value:
        """One categorical draw per row from probs [B, ..., V] -> tok [B, ...]."""
        u = self.b.emit("uniform", [], shape=probs.type.shape[:-1])[0]
        return self.b.emit("sample", [probs, u])[0]

    def stop_flag(self, logits: Value, token: Value) -> Value | None:
        """The exit policy's verdict after drafting `token` from `logits` (the draft's raw logits,
        before the sampler pipeline), or None when drafting always runs to max."""
        if self.stop is None:
            return None
        with self.b.located(self.stop.span, self.stop.name):
            return self.stop.component.lower(self, self.stop, logits, token)

    def nested(self, name: str) -> Builder:
        """Swap in a fresh builder for a region; `restore` puts the outer one back."""
        outer, self.b = self.b, Builder(name)
        self.b.meta = outer.meta
        return outer

    def restore(self, outer: Builder) -> Builder:
        inner, self.b = self.b, outer
        return inner


def lower(spec: Spec) -> Graph:
    """Spec -> round graph (unoptimized; see compiler.passes)."""
    lw = Lowering(spec)
    b = lw.b
    ctx = b.input(CTX)
    target: Instance = spec.slot("target")
    propose: Instance | None = spec.slot("propose")
    if lw.grammar is not None:  # checks what needs no vocabulary: syntax, schema keywords, an empty language
        lw.grammar.component.lower(lw, lw.grammar)
    if propose is None:
        b.at(target.span, "target")
        logits = lw.model_logits([ctx], lw.role(target))
        token = lw.sample(lw.probs(logits))
        b.emit("commit", [token])
        return b.build()
    verify: Instance = spec.slot("verify")
    for inst in (propose, verify):
        if inst.component.lower is None:
            raise DecError(f"{inst.kind} '{inst.name}' has no lowering yet", inst.span)
    b.at(propose.span, propose.name)
    proposal: Proposal = propose.component.lower(lw, propose, ctx)
    b.at(verify.span, verify.name)
    tokens, accepted = verify.component.lower(lw, verify, ctx, target, proposal)
    b.emit("commit", [tokens, accepted, proposal.count])
    return b.build()

