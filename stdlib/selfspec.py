"""Self-speculation: drafts made from the target itself, as model expressions usable wherever a model is.

    propose = autoregressive(early_exit(target, layer = 3), max = 4)    # LayerSkip / Draft & Verify
    propose = autoregressive(skip_layers(target, layers = [1, 2]))      # SWIFT / Draft & Verify

`early_exit(target, layer = L)` is the target's first L layers followed by its shared final norm and
LM head; `skip_layers(target, layers = [...])` is the target without the listed layers. When a
Decoder binds its models, each becomes a view of the bound target (stdlib/models/views.py) under a
role of its own, named after the target's: "target/exit3", "target/skip1_2" (what `decspec ir`
prints). A view keeps its own cache, so the draft and the target never read each other's K/V.
Layer numbers are checked against the bound model: a bad one is a diagnostic at its .dec position
that names the model's layer count.

The draft is an ordinary draft model to the verifier: rejection sampling is lossless whatever q is.
"""
from __future__ import annotations

from typing import Any, Mapping

from decspec.dsl.diagnostics import DecError
from decspec.stdlib.binding import layer_count
from decspec.stdlib.registry import Component, Contract, Param, register

_CONTRACT = Contract(None, "models carry no sampling contract; a view of the target drafts like any draft model")


def _base_role(inst) -> str:
    base = inst.arg("model")
    if base.name != "model":
        raise DecError(f"{inst.name} derives a draft from a model bound by name, e.g. {inst.name}(model(\"target\"), ...); "
                       f"found {base.name}(...)", inst.span, hint="apply it to the target itself")
    return base.arg("name")


def _layers_of(inst, models: Mapping[str, Any]) -> tuple[str, Any, int] | None:
    """(role, bound model, its layer count), or None when the base role is not bound (reported elsewhere)."""
    role = _base_role(inst)
    model = models.get(role)
    if model is None:
        return None
    return role, model, layer_count(model, role, inst)


def early_exit_role(lw, inst) -> str:
    return f"{_base_role(inst)}/exit{inst.arg('layer')}"


def bind_early_exit(inst, models: Mapping[str, Any]) -> dict:
    from decspec.stdlib.models.views import EarlyExit

    found = _layers_of(inst, models)
    if found is None:
        return {}
    role, model, n = found
    layer = inst.arg("layer")
    if not 1 <= layer <= n:
        raise DecError(f"early_exit at layer {layer}, but model '{role}' has {n} layers", inst.span,
                       hint=f"choose a layer in 1..{n} (the draft runs layers 0..layer-1, then the final norm and head)")
    return {early_exit_role(None, inst): EarlyExit(model, layer)}


def skip_layers_role(lw, inst) -> str:
    return f"{_base_role(inst)}/skip{'_'.join(str(i) for i in sorted(set(inst.arg('layers'))))}"


def bind_skip_layers(inst, models: Mapping[str, Any]) -> dict:
    from decspec.stdlib.models.views import SkipLayers

    found = _layers_of(inst, models)
    if found is None:
        return {}
    role, model, n = found
    layers = tuple(inst.arg("layers"))
    bad = [i for i in layers if not 0 <= i < n]
    if bad or len(set(layers)) >= n:
        what = f"layer {bad[0]}" if bad else f"all {n} layers"
        raise DecError(f"skip_layers skips {what}, but model '{role}' has {n} layers", inst.span,
                       hint=f"list layers in 0..{n - 1}, keeping at least one")
    if not hasattr(model, "layers_to_run"):
        raise DecError(f"skip_layers needs a model that can run any subset of its layers; model '{role}' "
                       f"({type(model).__name__}) can only exit early", inst.span,
                       hint="use decspec's built-in Transformer (load_transformer loads Llama checkpoints), or early_exit")
    return {skip_layers_role(None, inst): SkipLayers(model, layers)}


register(
    Component(
        "model",
        "early_exit",
        (
            Param("model", "model", doc="the model to draft from: the target"),
            Param("layer", "int", low=1, doc="layers run before the shared final norm and head (1 .. the model's layer count)"),
        ),
        "The model's first `layer` layers, then its own final norm and LM head: a self-speculative draft "
        "(role \"ROLE/exitL\").",
        _CONTRACT,
        early_exit_role,
        cite="Elhoushi et al. 2024, LayerSkip; Zhang et al. 2023, Draft & Verify",
        bind=bind_early_exit,
    )
)
register(
    Component(
        "model",
        "skip_layers",
        (
            Param("model", "model", doc="the model to draft from: the target"),
            Param("layers", "list[int]", doc="0-based layers to leave out (at least one layer must stay)"),
        ),
        "The model without the listed layers: a self-speculative draft (role \"ROLE/skipI_J\"). Needs a model that "
        "runs any subset of its layers (decspec's Transformer).",
        _CONTRACT,
        skip_layers_role,
        cite="Xia et al. 2024, SWIFT; Zhang et al. 2023, Draft & Verify",
        bind=bind_skip_layers,
    )
)
