"""The round as pure `torch.nn.Module`s for torch.export: no Python state, randomness as inputs.

Both modules run code from the inductor code generator (codegen.py), so the exported function is
the one the inductor backend compiles, not a second implementation:

- `RoundModule`: the whole round, draft loop unrolled (`schedule="unrolled"`), model calls through
  `StaticSession` with each model's static cache made explicit: every tensor the cache holds
  (K/V buffers, token history, lengths) is an input, cloned, updated by the round and returned. A draft
  source's cross-round state (token recycling's matrix, lookahead's window and pool: codegen.STATE_OPS)
  comes in and goes out the same way, after the caches.

      forward(ctx_tokens [B, S], ctx_length [B], u [B, U], *cache, *draft_state)
          -> (tokens [B, N], accepted [B], drafted [B], *new cache, *new draft_state)

- `VerifyModule`: what follows the proposal and the model calls, given their results: sampler
  pipeline, verification, acceptance, residual sampling and the commit. No model.

      forward(*logits, drafts [B, K], q [B, K, V], drafted [B], u [B, U]) -> (tokens [B, N], accepted [B], drafted [B])
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch

from decspec.backends.draft_state import INITIAL, RULES as DRAFT_STATE_RULES, staged_key, state_key
from decspec.backends.grammar import device_table
from decspec.backends.prefix import hidden_roles
from decspec.backends.speculation_length import cap_key, cap_ops
from decspec.backends.inductor import codegen
from decspec.backends.inductor.static import StaticSession
from decspec.backends.runtime import DRAFT_OPS
from decspec.compiler.ir import Graph, Op
from decspec.compiler.passes.draft_schedule import draft_schedule
from decspec.dsl.diagnostics import DecError

DTYPES = {"f32": torch.float32, "i64": torch.long, "tok": torch.long, "bool": torch.bool}


def where(op: Op) -> str:
    return f" (spec line {op.meta.line}:{op.meta.col})" if op.meta.line else ""


def _anchor(fn) -> None:
    """Keep the generated function's frames in the exported nodes' stack traces (torch.export keeps
    only `forward` frames and registered anchors), so a failure can name the line of generated code,
    hence the op and the .dec line."""
    annotate_fn = getattr(torch.fx.traceback, "annotate_fn", None)
    if annotate_fn is not None:
        annotate_fn({"decspec": "round"})(fn)


MODEL_CALLS = ("model_call", "tree_call")  # their logits are inputs of the verify part


def model_roles(graph: Graph, views: bool = False) -> dict[str, Op]:
    """{role: its first model_call (or tree_call)} for every role the round calls (the draft loop's body included);
    with `views`, also each view a model_select calls (masked arms: every view runs over the batch)."""
    roles: dict[str, Op] = {}
    for op in graph.walk():
        if op.name in MODEL_CALLS:
            roles.setdefault(op.param("model"), op)
        if views and op.name == "model_select":
            for role in op.param("models"):
                roles.setdefault(role, op)
    return roles


def _exportable(role: str, model: Any, op: Op) -> None:
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "forward_at"):
        raise DecError(
            f"cannot export op 'model_call' to MLIR{where(op)}: model '{role}' is a {type(model).__name__}; "
            "the export needs a model with a static-shape step (`forward_at`, e.g. decspec's Transformer) "
            "whose cache state is tensors"
        )


class RoundModule(torch.nn.Module):
    """One round as a pure function of the context, the uniforms and the models' caches.

    >>> from decspec.stdlib.models.default import random_models
    >>> dec = decspec.compile("specs/speculative.dec", models=random_models())   # doctest: +SKIP
    >>> module = RoundModule(dec.graph, dec.models, batch=1, capacity=128)      # doctest: +SKIP
    >>> tokens, accepted, drafted, *cache = module(*module.example_inputs())     # doctest: +SKIP
    """

    def __init__(self, graph: Graph, models: dict[str, Any], *, batch: int = 1, capacity: int = 128,
                 grammars: dict[str, Any] | None = None):
        super().__init__()
        self.graph = draft_schedule(graph, force="unrolled")  # one graph, no host loop
        namespace, self.source = codegen.build_round(self.graph)
        self.round_fn = namespace["round_fn"]
        _anchor(self.round_fn)
        self.batch, self.capacity = batch, capacity
        self.width = codegen.uniform_width(self.graph)
        calls = model_roles(self.graph, views=True)
        vocab_roles = [op.param("vocab") for op in self.graph.walk() if op.param("vocab") is not None]  # V of drafts, states
        for role in [*calls, *vocab_roles]:
            if role not in models:
                raise DecError(f"cannot export: decoder needs a '{role}' model and none is bound")
        for role, op in calls.items():
            _exportable(role, models[role], op)
        self.roles = list(calls)  # the roles with a cache, in the order of their state tensors
        # each cross-round draft state (backends/draft_state.py): its key in the round's m, and its initial tensors
        self.draft_states = {state_key(op): INITIAL[op.name](batch, models[op.param("vocab")].vocab_size,
                                                             **{k: v for k, v in op.params if k != "vocab"})
                             for op in self.graph.walk() if op.name in codegen.STATE_OPS}
        self.models = torch.nn.ModuleDict({r: models[r] for r in dict.fromkeys([*calls, *vocab_roles])})
        hidden = hidden_roles(self.graph)  # roles whose kept hidden states draft heads read: an input and an output
        self.sessions = {r: StaticSession(models[r], batch, capacity, keep_hidden=r in hidden) for r in self.models}
        self.hidden = {r: _hidden_size(models[r], r) for r in self.models if r in hidden}
        # each cross-round length cap or per-row draft view [B], chosen on the host between rounds (codegen reads m[cap_key])
        self.caps = {cap_key(op): op.param("max") if op.name == "length_cap" else 0 for op in cap_ops(self.graph)}
        # each cache's state: every tensor it holds, by attribute name ("k.3": layer 3 of a per-layer tuple)
        self.state_names = {r: state_names(self.sessions[r].cache) for r in self.roles}
        # a regular grammar's tables (backends/grammar.py GrammarTable) are buffers, constants of the function, and the
        # state after each row's committed tokens an input "grammar.SLOT.start" [B]; a CFG matcher has no table
        self.grammars: dict[str, Any] = {}
        self.grammar_starts: dict[str, int] = {}
        for slot, matcher in (grammars or {}).items():
            table = device_table(matcher, torch.device("cpu"))
            if table is None:
                op = next(op for op in self.graph.walk() if op.name == "grammar_state")
                raise DecError(f"cannot export op 'grammar_state'{where(op)}: grammar '{slot}' has no finite table (a "
                               "context-free grammar's states are parser stacks, walked on the host) or its tables are "
                               "too large", hint="a regular grammar (regex, json_schema, choice) exports")
            self.grammars[slot] = table
            self.grammar_starts[slot] = int(matcher.start)
            for name in TABLE_TENSORS:
                self.register_buffer(f"grammar_{slot}_{name}", getattr(table, name), persistent=False)
            if any(op.name == "grammar_forced" and op.param("grammar") == slot for op in self.graph.walk()):
                self.register_buffer(f"grammar_{slot}_forced", table.forced_tokens(), persistent=False)  # forced drafts' table

    def draft_state_names(self) -> list[str]:
        """The draft states' input (and output) names: tensor i of draft source NAME's state is "draft_state.NAME.i"
        (lookahead: 0 its levels, 1 its pool; recycle: 0 its matrix)."""
        return [f"draft_state.{key.split(':', 1)[0]}.{i}" for key, init in self.draft_states.items() for i in range(len(init))]

    def input_names(self) -> list[str]:
        return ["ctx_tokens", "ctx_length", "u", *(f"{r}.{n}" for r in self.roles for n in self.state_names[r]),
                *self.draft_state_names(), *(f"grammar.{slot}.start" for slot in self.grammars), *self.caps,
                *(f"{r}.hiddens" for r in self.hidden)]

    def output_names(self) -> list[str]:
        return ["tokens", "accepted", "drafted", *(f"{r}.{n}" for r in self.roles for n in self.state_names[r]),
                *self.draft_state_names(), *(f"{r}.hiddens" for r in self.hidden)]

    def example_inputs(self, seed: int = 0, length: int = 16) -> tuple[torch.Tensor, ...]:
        """Inputs of the fixed shapes: a random context of `length` tokens per row, uniforms, empty caches, the draft
        states a generation starts from."""
        g = torch.Generator().manual_seed(seed)
        vocab = next(iter(self.models.values())).vocab_size
        ctx_tokens = torch.randint(0, vocab, (self.batch, self.capacity), generator=g)
        ctx_length = torch.full((self.batch,), length, dtype=torch.long)
        u = torch.rand(self.batch, self.width, generator=g)
        state = [get_state(self.sessions[r].cache, n).clone() for r in self.roles for n in self.state_names[r]]
        drafts = [x.clone() for init in self.draft_states.values() for x in init]
        starts = [torch.full((self.batch,), self.grammar_starts[slot], dtype=torch.long) for slot in self.grammars]
        caps = [torch.full((self.batch,), value, dtype=torch.long) for value in self.caps.values()]
        hiddens = [torch.zeros(self.batch, self.capacity, c, dtype=self.models[r].dtype) for r, c in self.hidden.items()]
        return (ctx_tokens, ctx_length, u, *state, *drafts, *starts, *caps, *hiddens)

    def forward(self, ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, u: torch.Tensor, *state: torch.Tensor):
        m = {}
        for slot, table in self.grammars.items():  # the table over this module's buffers; no host session
            view = copy.copy(table)
            for name in TABLE_TENSORS:
                setattr(view, name, getattr(self, f"grammar_{slot}_{name}"))
            key = codegen.grammar_key(slot)
            m[key], m[key + ":table"] = None, view
            if hasattr(self, f"grammar_{slot}_forced"):
                m[key + ":forced"] = getattr(self, f"grammar_{slot}_forced")
        rest = iter(state)  # the caches' tensors, the draft states', each grammar's start state, the caps, the hidden states
        caches = iter([next(rest) for r in self.roles for _ in self.state_names[r]])
        for key, init in self.draft_states.items():
            m[key] = tuple(next(rest) for _ in init)  # read, never written: the round hands back new tensors
        for slot in self.grammars:
            m[codegen.grammar_key(slot) + ":start"] = next(rest)
        for key in self.caps:
            m[key] = next(rest)
        hiddens = {r: next(rest).clone() for r in self.hidden}  # written by the round's forwards: a copy
        for role, model in self.models.items():
            session = copy.copy(self.sessions[role])  # a fresh view: the session's cache holds this call's tensors
            session.model = model
            if role in self.state_names:
                session.cache = copy.copy(session.cache)
                for name in self.state_names[role]:
                    set_state(session.cache, name, next(caches).clone())  # functional: the inputs are never written
            if role in hiddens:
                session.hiddens = hiddens[role]
            m[role] = session
        tokens, accepted, drafted, _steps = self.round_fn(ctx_tokens, ctx_length, u, m)
        return (tokens, accepted, drafted, *(get_state(m[r].cache, n) for r in self.roles for n in self.state_names[r]),
                *(x for key in self.draft_states for x in m[staged_key(key)]), *(m[r].hiddens for r in self.hidden))


def _hidden_size(model: Any, role: str) -> int:
    """The width of the hidden states a role keeps for its draft heads (its config's hidden_size, or its viewed model's)."""
    config = getattr(model, "config", None) or getattr(getattr(model, "model", None), "config", None)
    size = getattr(config, "hidden_size", None)
    if not isinstance(size, int):
        raise DecError(f"cannot export the hidden states model '{role}' keeps for its draft heads: a "
                       f"{type(model).__name__} has no config.hidden_size")
    return size


TABLE_TENSORS = ("words", "dfa_of", "transitions", "index_of", "token_bytes", "token_length", "bits")  # GrammarTable's


def state_names(cache) -> list[str]:
    """The tensors a cache holds: attribute names, and "name.i" for the tensors of a tuple attribute."""
    names = []
    for name, value in sorted(vars(cache).items()):
        if isinstance(value, torch.Tensor):
            names.append(name)
        elif isinstance(value, tuple) and value and all(isinstance(t, torch.Tensor) for t in value):
            names += [f"{name}.{i}" for i in range(len(value))]
    return names


def get_state(cache, name: str) -> torch.Tensor:
    attr, _, i = name.partition(".")
    value = getattr(cache, attr)
    return value[int(i)] if i else value


def set_state(cache, name: str, tensor: torch.Tensor) -> None:
    attr, _, i = name.partition(".")
    if not i:
        setattr(cache, attr, tensor)
        return
    items = list(getattr(cache, attr))
    items[int(i)] = tensor
    setattr(cache, attr, tuple(items))


def verified_ops(graph: Graph) -> list[Op]:
    """The round's ops after the proposal and the model calls: not the calls, the draft ops, nor the ops that read and
    update a draft source's cross-round state (backends/draft_state.py: part of the proposal, whatever their order)."""
    return [op for op in graph.ops if op.name not in MODEL_CALLS and op.name not in DRAFT_OPS and op.name not in DRAFT_STATE_RULES]


def verify_source(graph: Graph) -> tuple[str, list[tuple[str, Op, int]]]:
    """The round after its proposal and model calls, as the source of `verify(...)`.

    -> (source, inputs): inputs are (name, op, output index) for each function argument except `u`.
    """
    e = codegen.Emitter(graph)
    e.steps = None  # verify returns (tokens, accepted, drafted) only
    env: dict = {}
    inputs: list[tuple[str, Op, int]] = []
    seen: dict[str, int] = {}
    rest = verified_ops(graph)
    read = {v for op in rest for v in op.inputs}
    for op in graph.ops:
        if op.name in MODEL_CALLS and op.outputs[0] in read:  # not a call only the proposal reads (lookahead's branch)
            role = op.param("model")
            seen[role] = seen.get(role, 0) + 1
            name = f"{role.replace('/', '_')}_logits" + (str(seen[role]) if seen[role] > 1 else "")  # a view: "target/lens2"
            env[op.outputs[0]] = name
            inputs.append((name, op, 0))
        elif op.name in DRAFT_OPS:
            for i, (v, name) in enumerate(zip(op.outputs, ("drafts", "q", "drafted"))):
                env[v] = name
                inputs.append((name, op, i))

    def body():
        for op in rest:
            if any(v in graph.inputs for v in op.inputs):
                raise DecError(f"cannot export the verify part: op '{op.name}' reads the context{where(op)}")
            if op.name == "commit" and len(op.inputs) == 1:  # no drafts: one token per row
                e.line(f"return K.commit_one({env.get(op.inputs[0], e.name(op.inputs[0]))})  # commit{where(op)}")
            else:
                e.emit_op(op, env, None)

    lines = e.function(f"verify({', '.join([name for name, _, _ in inputs] + ['u'])})", body)
    consts = "".join(f"C{i} = {c}\n" for i, c in enumerate(e.consts))
    header = "import torch\nfrom decspec.backends.inductor import kernels as K\n"
    return header + consts + "\n\n" + "\n".join(lines), inputs


class VerifyModule(torch.nn.Module):
    """Verification, acceptance and residual sampling of one round, given the proposal and the
    model calls' logits (no model): the part whose outputs can be checked against the eager rules."""

    def __init__(self, graph: Graph, *, batch: int = 1, vocab: int = 512):
        super().__init__()
        self.graph = graph
        self.source, self.inputs = verify_source(graph)
        namespace: dict[str, Any] = {}
        exec(compile(self.source, f"<decspec verify {dict(graph.attrs).get('spec', '')}>", "exec"), namespace)
        self.verify_fn = namespace["verify"]
        _anchor(self.verify_fn)
        self.batch, self.vocab = batch, vocab
        rest = verified_ops(graph)
        self.width = sum(math.prod(int(d) for d in op.param("shape")[1:]) for op in rest if op.name == "uniform")

    def shape(self, op: Op, i: int) -> tuple[int, ...]:
        dims = {"B": self.batch, "V": self.vocab}
        return tuple(dims[d] if isinstance(d, str) else int(d) for d in op.outputs[i].type.shape)

    def input_names(self) -> list[str]:
        return [name for name, _, _ in self.inputs] + ["u"]

    def output_names(self) -> list[str]:
        return ["tokens", "accepted", "drafted"]

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random inputs of the fixed shapes: logits ~ N(0, 2), drafts sampled from random q, counts in 0..K."""
        g = torch.Generator().manual_seed(seed)
        out: dict[str, torch.Tensor] = {}
        for name, op, i in self.inputs:
            shape = self.shape(op, i)
            if name == "drafts":
                continue  # drawn from q below
            if name == "q":
                q = torch.softmax(torch.randn(shape, generator=g) * 2, -1)
                out["q"] = q
                out["drafts"] = torch.multinomial(q.reshape(-1, shape[-1]), 1, generator=g).reshape(shape[:-1])
            elif name == "drafted":
                k = self.shape(*next((o, j) for n, o, j in self.inputs if n == "drafts"))[1]
                out[name] = torch.randint(0, k + 1, shape, generator=g)
            else:
                out[name] = torch.randn(shape, generator=g) * 2
        u = torch.rand(self.batch, self.width, generator=g)
        return (*(out[name] for name, _, _ in self.inputs), u)

    def forward(self, *args: torch.Tensor):
        tokens, accepted, drafted = self.verify_fn(*args)
        return tokens, accepted, drafted
