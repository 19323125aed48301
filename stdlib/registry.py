"""The component registry: every name a spec can use, with its signature and lossless contract.

A component is the unit of extension. It declares its parameters (typed, with defaults and
bounds), its lossless contract, and a lowering function that emits IR ops. Adding one touches
no core file: define it next to its family and call :func:`register`.

    >>> lookup("sampler", "top_k").params[0]
    Param(name='k', type='int', default=REQUIRED, low=1, high=None, doc='keep the k most likely tokens')
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

# The kinds of value a slot or a parameter can hold.
#   scalar types: "int", "float", "str", "bool", "list[int]", "list[float]", "list[str]"
#   component kinds: "model", "sampler", "draft", "exit", "verifier", "stat", "grammar", "search", "denoise", "unmask"
KINDS = ("model", "sampler", "draft", "exit", "verifier", "stat", "grammar", "search", "denoise", "unmask")
SCALAR_TYPES = ("int", "float", "str", "bool", "list[int]", "list[float]", "list[str]", "cond")

# Slots of a decoder block and the kind each holds. Other names in a block are local bindings.
SLOTS: dict[str, str] = {
    "target": "model",
    "sampler": "sampler",
    "propose": "draft",
    "stop": "exit",
    "verify": "verifier",
    "grammar": "grammar",
    "search": "search",  # beam search (stdlib/search.py): decoding that keeps several hypotheses; excludes propose/stop/verify
    "denoise": "denoise",  # masked-diffusion decoding (stdlib/diffusion.py): parallel unmasking; excludes propose/stop/verify/search
}
# The `search` components that sample: they run the spec's ordinary round (any propose/verify) on n copies of each prompt,
# then pick one candidate (stdlib/search.py); the other searches (beam) rank hypotheses step by step, with no round.
SAMPLED_SEARCHES = ("best_of", "self_consistency", "mbr")


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # a scalar type or a component kind
    default: Any = REQUIRED
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Contract:
    """What a component guarantees about the output distribution.

    lossless: True when the component preserves the target's distribution (after the sampler
    pipeline); None when the component does not take part in that question (samplers, models).
    reason: one line the losslessness analysis quotes in `decspec check`.
    greedy: for a lossy component that is exactly lossless when the sampler pipeline is greedy (the
    target's distribution one-hot), the reason why; the analysis then calls such specs lossless.
    """

    lossless: bool | None
    reason: str
    greedy: str = ""


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    params: tuple[Param, ...]
    doc: str
    contract: Contract
    lower: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    cite: str = ""
    # bind(instance, models) -> {role: model}: run when a Decoder binds its models (stdlib/binding.py);
    # makes derived models (a view of the target) and checks what the bound models must offer
    bind: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    # token trees (stdlib/trees.py): a draft source proposes one; a verifier can verify one
    trees: bool = False
    # a draft statistic's range (low, high), both finite: a threshold `when` compares it with must lie in it
    values: tuple[float, float] | None = None
    # a draft source that reads the spec's grammar (`forced`): it lowers only in a spec with a grammar slot
    needs_grammar: bool = False

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def signature(self) -> str:
        parts = []
        for p in self.params:
            parts.append(f"{p.name}: {p.type}" + ("" if p.required else f" = {p.default!r}"))
        return f"{self.name}({', '.join(parts)})"


_REGISTRY: dict[tuple[str, str], Component] = {}


def register(component: Component) -> Component:
    """Add a component; a second registration of the same (kind, name) replaces the first.

    Every float parameter declares finite bounds (low and high), and a draft statistic its finite range
    (`values`): the checker refuses values outside them at the spec's position, so the component's math
    only has to be stable over that range."""
    if component.kind not in KINDS:
        raise ValueError(f"unknown component kind {component.kind!r}; expected one of {KINDS}")
    for p in component.params:
        if p.type in ("float", "list[float]") and not (_finite(p.low) and _finite(p.high) and p.low <= p.high):
            raise ValueError(f"{component.kind} '{component.name}': float parameter '{p.name}' needs finite bounds "
                             f"low <= high (has low={p.low}, high={p.high})")
    if component.kind == "stat" and not (component.values and all(map(_finite, component.values))):
        raise ValueError(f"draft statistic '{component.name}' needs a finite range `values=(low, high)`")
    _REGISTRY[(component.kind, component.name)] = component
    return component


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def unregister(kind: str, name: str) -> None:
    _REGISTRY.pop((kind, name), None)


def lookup(kind: str, name: str) -> Component | None:
    _load_stdlib()
    return _REGISTRY.get((kind, name))


def names(kind: str | None = None) -> list[str]:
    _load_stdlib()
    return sorted({n for (k, n) in _REGISTRY if kind is None or k == kind})


def components(kind: str | None = None) -> list[Component]:
    _load_stdlib()
    return [c for (k, _), c in sorted(_REGISTRY.items()) if kind is None or k == kind]


_loaded = False


def _load_stdlib() -> None:
    """Import the stdlib families once, so their register() calls run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from decspec.stdlib import catalog  # noqa: F401  (registers every stdlib component)
