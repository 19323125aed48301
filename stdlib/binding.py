"""Binding a checked spec to models: the roles the caller binds, plus the models components derive from them.

`decspec.compile(spec, target=t)` binds the role "target". A component may derive a model from a
bound one (`early_exit(target, layer = 2)` is a view of the target, role "target/exit2") or need
something of it (`heads(target, kind = "medusa")` needs Medusa heads): its `bind(instance, models)`
runs here, in source order, inner instances first, and returns the roles it adds.

    >>> from decspec.dsl.check import load
    >>> from decspec.stdlib.models.default import random_models
    >>> spec = load('decoder d() { target = model("target"); propose = autoregressive(early_exit(target, layer = 2)); verify = rejection }')
    >>> sorted(bind_models(spec, {"target": random_models()["target"]}))
    ['target', 'target/exit2']
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

from decspec.dsl.spec import Instance, Spec


LAYERED_HINT = ("bind a transformer (decspec's Transformer or a Hugging Face model); for exact tests, "
                "decspec.stdlib.models.layered_table.LayeredTableModel")


def layer_count(model: Any, role: str, inst: Instance) -> int:
    """How many layers the model bound to `role` has, for a component (`inst`) that reads its layers; a DecError at
    the component when the model has none (a table model, a custom one)."""
    from decspec.dsl.diagnostics import DecError

    n = getattr(model, "num_layers", None)
    if n is None:
        raise DecError(f"{inst.name} needs a model with layers, but model '{role}' ({type(model).__name__}) has none",
                       inst.span, hint=LAYERED_HINT)
    return n


def role_of(model: Instance) -> str:
    """The role a model instance is bound to (what `Lowering.role` names in the IR)."""
    return model.arg("name") if model.name == "model" else model.component.lower(None, model)


def base_role(model: Instance) -> str:
    """The first role a model expression reads: model("target") -> "target"; a combined model
    (contrastive(expert = model("target"), ...), dola(model("target"), ...)) -> its first model's. Its vocabulary,
    tokenizer and EOS are the decoder's."""
    while model.name != "model":
        model = next(v for _, v in model.args if isinstance(v, Instance) and v.kind == "model")
    return model.arg("name")


def instances(spec: Spec) -> Iterator[Instance]:
    """Every component instance of the spec, inner ones (arguments) before the instance using them."""
    def visit(v: Any) -> Iterator[Instance]:
        if isinstance(v, Instance):
            for _, a in v.args:
                yield from visit(a)
            yield v
        elif isinstance(v, tuple):
            for a in v:
                yield from visit(a)

    for _, value in spec.slots:
        yield from visit(value)


def bind_models(spec: Spec, models: Mapping[str, Any]) -> dict[str, Any]:
    """{role: model}: the given models and every model the spec's components derive from them.
    Raises DecError (at the component's .dec position) when a bound model lacks what a component needs."""
    bound = dict(models)
    for inst in instances(spec):
        if inst.component.bind is not None:
            bound.update(inst.component.bind(inst, bound))
    return bound
