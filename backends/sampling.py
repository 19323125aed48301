"""Per-call, per-row sampler settings: the spec fixes the pipeline's shape, a call sets its numbers.

    dec.generate(prompts, temperature=0.7, top_p=[0.9, 1.0])     # every row at 0.7; top_p per row

A setting is named after its sampler stage (`temperature`, `top_k`, `top_p`, `min_p`, `typical_p`, `epsilon_cutoff`, `eta_cutoff`,
`repetition_penalty`, `frequency_penalty`, `presence_penalty`) and replaces the parameter of every stage of
that name in the spec's `sampler` pipeline, target and drafts alike (so a lossless decoder stays lossless
w.r.t. the target under the call's pipeline). A stage the spec has not got cannot be set: the pipeline's
shape is the spec's.

The values reach the round as inputs, never as constants: `open_sampler` marks every stage parameter of the
round graph `PerRow` before the pass pipeline (so no pass folds it: `temperature(1)` is not dropped,
`temperature(0)` not turned into argmax), and each call hands the round one float64 [B] tensor per stage
(`settings`), the spec's value where the call gives none. The eager rules and the inductor backend's kernels
resolve them (samplers.per_row); a compiled round takes them as tensor inputs, so new values do not recompile.
With the spec's own values a call computes what the spec's folded graph does, token for token.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from decspec.backends.arguments import shown
from decspec.compiler.ir import Graph
from decspec.compiler.text import Record
from decspec.dsl.diagnostics import DecError, did_you_mean, excerpt
from decspec.stdlib.registry import lookup, names
from decspec.stdlib.samplers import PerRow


def settable() -> dict[str, tuple[str, Any]]:
    """{stage: (its parameter, the registry's Param)} for the sampler stages a call may set: one numeric parameter each."""
    out = {}
    for name in names("sampler"):
        params = lookup("sampler", name).params
        if len(params) == 1 and params[0].type in ("int", "float"):
            out[name] = (params[0].name, params[0])
    return out


def open_stage(i: int, name: str, fields: tuple, stages_of: Mapping[str, tuple[str, Any]]) -> tuple:
    """The fields of the pipeline's i-th stage with its settable parameter a PerRow (key "stage@position")."""
    if name not in stages_of:
        return fields
    return tuple((k, PerRow(f"{name}@{i}", name, v) if k == stages_of[name][0] else v) for k, v in fields)


def pipeline(spec: Any, open: bool) -> tuple:
    """The spec's sampler stages as apply_pipeline takes them, open (PerRow parameters) or with the spec's constants."""
    stages_of = settable()
    return tuple((s.name, open_stage(i, s.name, tuple(s.args), stages_of) if open else tuple(s.args))
                 for i, s in enumerate(spec.slot("sampler", ())))


def open_sampler(graph: Graph) -> Graph:
    """The lowered graph with every settable stage parameter a PerRow (key "stage@position"), in regions too; run it
    through the pass pipeline after this."""
    stages_of = settable()

    def stage(i: int, r: Record) -> Record:
        return Record(r.name, open_stage(i, r.name, r.fields, stages_of))

    def walk(g: Graph) -> Graph:
        ops = []
        for op in g.ops:
            if op.region is not None:
                op = op.replace(region=walk(op.region))
            if op.name == "logits_transform":
                stages = tuple(stage(i, r) for i, r in enumerate(op.param("stages")))
                op = op.replace(params=tuple((k, stages if k == "stages" else v) for k, v in op.params))
            ops.append(op)
        return g.replace(ops=ops)

    return walk(graph)


def sampler_settings(spec: Any, given: Mapping[str, Any], rows: int) -> dict[str, torch.Tensor]:
    """The call's settings checked against the spec's pipeline -> {PerRow key: float64 [rows]}: a value for every stage
    that can be set, the spec's own where the call gives none. A value is a number (every row) or one per row."""
    stages = list(spec.slot("sampler", ()))
    stages_of = settable()
    present = {s.name for s in stages}
    for name in given:
        if name not in stages_of:
            hint = did_you_mean(name, list(stages_of))
            raise DecError(f"unexpected keyword argument '{excerpt(name)}'" +
                           ("" if hint else f"; per-call sampler settings are {', '.join(stages_of)}"), hint=hint)
        if name not in present:
            pipeline = " | ".join(str(s) for s in stages) or "none: the target's distribution as it is"
            raise DecError(f"{name}={excerpt(repr(given[name]))}: the spec's sampler pipeline has no {name} stage to set "
                           f"(its pipeline: {pipeline}); a call sets the numbers of the spec's stages, the spec fixes which",
                           spec.slot("sampler")[0].span if stages else None, hint=f"add `| {name}(...)` to the spec's sampler")
    values = {name: _rows(name, v, rows, stages_of[name][1]) for name, v in given.items()}
    _keep_greedy_exact(spec, values)
    out = {}
    for i, s in enumerate(stages):
        if s.name in stages_of:
            param = stages_of[s.name][0]
            out[f"{s.name}@{i}"] = values.get(s.name, torch.full((rows,), float(s.arg(param)), dtype=torch.float64))
    return out


def _rows(name: str, value: Any, rows: int, param: Any) -> torch.Tensor:
    """One setting: a number for every row, or a list (tuple) of one per row, each a number in the stage's range."""
    many = isinstance(value, (list, tuple))
    if many and len(value) != rows:
        raise DecError(f"{name} has {len(value)} values for {rows} prompt{'s' * (rows != 1)}; give one number, or one per prompt")
    out = []
    for b, v in enumerate(value if many else [value]):
        where = f"{name}[{b}]" if many else name
        integer = param.type == "int"
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or (not integer and not math.isfinite(v)):
            raise DecError(f"{where} must be {'an integer' if integer else 'a finite number'} (got {shown(v)})")
        if (param.low is not None and v < param.low) or (param.high is not None and v > param.high):
            bounds = f"[{param.low:g}, {param.high:g}]" if param.high is not None else f">= {param.low:g}"
            raise DecError(f"{where}={v!r} is outside {name}'s range {bounds}")
        out.append(float(v))
    return torch.tensor(out if many else out * rows, dtype=torch.float64)


def _keep_greedy_exact(spec: Any, values: Mapping[str, torch.Tensor]) -> None:
    """A spec lossless only because its sampler is greedy (a verifier exact for greedy only) keeps temperature 0."""
    from decspec.compiler.analysis import is_greedy

    t = values.get("temperature")
    if t is None or not bool((t != 0).any()) or not is_greedy(tuple(spec.slot("sampler", ()))):
        return
    parts = [(slot, c) for slot in ("propose", "stop", "verify") if (c := spec.slot(slot)) is not None]
    greedy_only = [(slot, c) for slot, c in parts if c.component.contract.lossless is False and c.component.contract.greedy]
    if greedy_only:
        slot, c = greedy_only[0]
        raise DecError(f"temperature > 0 would make decoder '{spec.name}' lossy: {slot} = {c.name} is exact only when the "
                       "sampler is greedy (temperature 0)", c.span,
                       hint="keep temperature=0 for this spec, or use a verifier that is lossless when sampling (rejection)")
