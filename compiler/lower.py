"""Lowering: a checked Spec becomes one round graph (propose -> verify -> commit).

The core only wires slots together; every op sequence comes from a component's own `lower`
function, so adding a component never touches this file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from decspec.compiler.builder import Builder
from decspec.compiler.ir import CTX, Graph, Type, Value
from decspec.compiler.text import Record
from decspec.dsl.diagnostics import DecError
from decspec.dsl.spec import Instance, Spec
from decspec.stdlib.registry import SAMPLED_SEARCHES
from decspec.stdlib.samplers import needs_context


@dataclass
class Proposal:
    """What a draft source hands the verifier: tokens [B,K], their draft probs [B,K,V], counts [B]."""

    tokens: Value
    probs: Value
    count: Value
    max: int
    parents: tuple[int, ...] | None = None  # a token tree (stdlib/trees.py): each node's parent position; None: a chain
    learn: Any = None  # learn(lw, verify): ops after verification for a draft source that keeps state across rounds (stdlib/recycling.py)


@dataclass
class LoopState:
    """What an exit policy asks of the draft loop whose body is being built: loop-carried values
    (name -> [init, value in the body, next value]) and a cross-round length cap (policy, params, check)."""

    carried: dict = field(default_factory=dict)
    cap: tuple | None = None


@dataclass(frozen=True)
class Combination:
    """A model expression whose logits combine several roles' (stdlib/combine.py): the roles read, in order, and the
    params of the `logits_combine` op over their logits."""

    roles: tuple[str, ...]
    params: tuple[tuple[str, Any], ...]
    span: Any = None
    name: str = ""


class Lowering:
    """The state components lower into: the builder, the sampler pipeline, the exit policy."""

    def __init__(self, spec: Spec):
        self.spec = spec
        params = tuple((k, v) for k, v in spec.params if isinstance(v, (bool, int, float, str)))
        self.b = Builder("round", attrs=(("spec", spec.name),) + params)
        self.sampler: tuple[Instance, ...] = tuple(spec.slot("sampler", ()))
        self.stop: Instance | None = spec.slot("stop")
        self.grammar: Instance | None = spec.slot("grammar")
        self.loop = LoopState()  # what the exit policy asks of the draft loop being built
        self.read_at: dict[Value, list[Value]] = {}  # logits -> the (ctx[, ext[, n]]) they were read after (penalty stages need it)
        self.combined: dict[str, Combination] = {}  # the names `role` gave combined models (contrastive, dola) -> what they read

    def role(self, model: Instance) -> str:
        """The role a model instance is bound to: `model("draft")` -> "draft"; a model derived from
        another (`early_exit(target, layer = 2)`) names its own role, e.g. "target/exit2"."""
        if model.name != "model":
            return model.component.lower(self, model)
        return model.arg("name")

    def model_logits(self, inputs: list[Value], model: str | tuple[str, ...], last: bool = True, arm: Value | None = None) -> Value:
        """model_call over ctx ++ ext[:, :n], masked by the grammar when the spec has one: the logits
        every sampler (and exit policy) sees. The grammar state is read at the same positions.
        With `arm` (i64[B]) and a tuple of roles: model_select, row b reads model[arm[b]].
        A combined model (stdlib/combine.py): each of its parts' logits so read, then one logits_combine over them."""
        if isinstance(model, str) and model in self.combined:
            how = self.combined[model]
            parts = [self.model_logits(inputs, role, last) for role in how.roles]
            with self.b.located(how.span, how.name) as b:
                logits = b.emit("logits_combine", parts, **dict(how.params))[0]
            self.read_at[logits] = list(inputs)
            return logits
        if arm is not None:
            logits = self.b.emit("model_select", [arm, *inputs], models=tuple(model), last=last)[0]
        else:
            logits = self.b.emit("model_call", inputs, model=model, last=last)[0]
        if self.grammar is not None:
            with self.b.located(self.grammar.span, self.grammar.name) as b:
                states = b.emit("grammar_state", inputs, grammar="grammar", last=last)[0]
                logits = b.emit("grammar_mask", [logits, states], grammar="grammar")[0]
        self.read_at[logits] = list(inputs)
        return logits

    def vocab_role(self) -> str:
        """The bound role whose vocabulary V is (one-hot drafts, cross-round states): the target's, or a combined
        target's first model's."""
        from decspec.stdlib.binding import base_role

        return base_role(self.spec.slot("target"))

    def probs(self, logits: Value) -> Value:
        """softmax(sampler pipeline(logits)): the distribution every model is sampled from."""
        if not self.sampler:
            return self.b.emit("softmax", [logits])[0]
        stages = tuple(Record(s.name, tuple(s.args)) for s in self.sampler)
        inputs = [logits]
        if needs_context(stages):  # penalties read the tokens before each position: the context the logits were read after
            if logits not in self.read_at:
                stage = next(s for s in self.sampler if needs_context((Record(s.name),)))
                raise DecError(f"sampler stage '{stage.name}' reads the tokens before each position, which this draft source "
                               "does not provide", stage.span, hint="drop the penalty, or draft with a model")
            inputs += self.read_at[logits]
        with self.b.located(self.sampler[0].span, "sampler") as b:
            logits = b.emit("logits_transform", inputs, stages=stages)[0]
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
        self.loop = LoopState()
        return outer

    def carried(self, name: str, init: float) -> Value:
        """A loop-carried f32[B] of the draft loop being built: its value after the previous step
        (`init` at step 0). Give the step's new value with `carry_next`. One per name."""
        if name not in self.loop.carried:
            self.loop.carried[name] = [float(init), self.b.input(Type("f32", ("B",))), None]
        return self.loop.carried[name][1]

    def carry_next(self, name: str, value: Value) -> None:
        self.loop.carried[name][2] = value

    def draft_step(self) -> Value:
        """The step index i64[] of the draft loop body being built (its third input)."""
        step = self.b.inputs[2] if len(self.b.inputs) > 2 else None
        if step is None or step.type != Type("i64"):
            raise DecError("the draft step is only known inside a draft loop's body", self.stop.span if self.stop else None)
        return step

    def length_cap(self, policy: str, params: dict[str, Any], check: Any = None) -> None:
        """Ask for a per-row speculation length chosen across rounds (an `length_cap` op feeding the
        loop); `check(max)` may raise a DecError when the policy does not fit the loop's `max`."""
        self.loop.cap = (policy, tuple(params.items()), check)

    def draft_loop(self, outer: Builder, ctx: Value, k: int, token: Value, q: Value, stop: Value | None) -> tuple[Value, Value, Value]:
        """Close the draft loop's body (token, q[, stop], carried values...), put the outer builder
        back and emit the loop, fed by the exit policy's length cap when it has one.
        -> (drafts [B,K], probs [B,K,V], count [B])"""
        loop = self.loop
        missing = [n for n, (_, _, nxt) in loop.carried.items() if nxt is None]
        if missing:
            raise DecError(f"internal: loop-carried value(s) {missing} were never updated")
        outs = (token, q) + ((stop,) if stop is not None else ()) + tuple(nxt for _, _, nxt in loop.carried.values())
        body = self.b.build(outs)
        self.restore(outer)
        inputs = [ctx]
        if loop.cap is not None:
            policy, params, check = loop.cap
            with self.b.located(self.stop.span, self.stop.name) as b:
                if check is not None:
                    check(k)
                inputs.append(b.emit("length_cap", [], policy=policy, max=k, **dict(params))[0])
        carry = {"carry": tuple(init for init, _, _ in loop.carried.values())} if loop.carried else {}
        return self.b.emit("draft_loop", inputs, region=body, max=k, **carry)

    def restore(self, outer: Builder) -> Builder:
        inner, self.b = self.b, outer
        return inner


def lower(spec: Spec) -> Graph:
    """Spec -> round graph (unoptimized; see compiler.passes)."""
    search: Instance | None = spec.slot("search")
    if search is not None and search.name not in SAMPLED_SEARCHES:  # beam search re-ranks whole hypotheses every step:
        # it runs on the host (backends/beam.py); a sampling search runs this round on n copies of each prompt
        raise DecError(f"decoder '{spec.name}' has no round graph: `search = {search.name}(...)` keeps several hypotheses "
                       "per prompt and runs on the host over the model protocol (backends/beam.py)", search.span,
                       hint="run it with decspec.compile(spec).generate(...) or `decspec run` on the eager backend")
    denoise: Instance | None = spec.slot("denoise")
    if denoise is not None:  # masked diffusion unmasks positions of a block in any order: a host loop (backends/diffusion.py)
        raise DecError(f"decoder '{spec.name}' has no round graph: `denoise = {denoise.name}(...)` unmasks positions of a "
                       "block in any order and runs on the host over the diffusion model protocol (backends/diffusion.py)",
                       denoise.span, hint="run it with decspec.compile(spec).generate(...) or `decspec run` on the eager backend")
    lw = Lowering(spec)
    b = lw.b
    ctx = b.input(CTX)
    target: Instance = spec.slot("target")
    if target.name != "model" and lw.role(target) not in lw.combined:  # a combined model (stdlib/combine.py) may be the target
        raise DecError(f"the target must be a model bound by name, e.g. model(\"target\"); '{target.name}' derives a draft from one",
                       target.span, hint=f"use {target.name}(...) as the draft, e.g. propose = autoregressive({target.name}(...))")
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
    if proposal.parents is not None and not verify.component.trees:
        from decspec.stdlib.registry import components

        takes = [c.name for c in components("verifier") if c.trees]
        raise DecError(f"verifier '{verify.name}' cannot verify a token tree (proposed by '{propose.name}')", verify.span,
                       hint=f"verifiers that take trees: {', '.join(takes)}")
    b.at(verify.span, verify.name)
    tokens, accepted = verify.component.lower(lw, verify, ctx, target, proposal)
    if proposal.learn is not None:
        proposal.learn(lw, verify)
    b.emit("commit", [tokens, accepted, proposal.count])
    return b.build()

