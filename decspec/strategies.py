"""Hypothesis strategies for property tests of decoders (re-exported by `decspec.testing`).

Distributions, table models, target/draft pairs, sampler pipelines and whole specs. Pipelines and
specs are drawn from the component registry, so a component you register (a verifier, an exit
policy, a sampler stage) is drawn too, with no change here.

    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5)
    ... @given(models=model_pairs(vocab=st.just(3)), pipeline=sampler_pipelines())
    ... def check(models, pipeline):
    ...     assert models["target"].vocab_size == models["draft"].vocab_size == 3
    >>> check()
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st

from decspec.stdlib import registry
from decspec.stdlib.models.layered_table import LayeredTableModel
from decspec.stdlib.models.table import TableModel

Pipeline = list[tuple[str, dict]]  # [("temperature", {"t": 0.8}), ("top_k", {"k": 3})]

_ints = st.integers


def _drawn(draw, value):
    return draw(value) if isinstance(value, st.SearchStrategy) else value


@st.composite
def distributions(draw, vocab: int | st.SearchStrategy[int] = _ints(2, 6), *, zeros: bool = True) -> torch.Tensor:
    """A probability vector [V] (float64, sums to 1), with entries exactly 0 when `zeros`."""
    V = _drawn(draw, vocab)
    weights = draw(st.lists(_ints(0 if zeros else 1, 20), min_size=V, max_size=V).filter(any))
    w = torch.tensor(weights, dtype=torch.float64)
    return w / w.sum()


@st.composite
def table_models(draw, vocab: int | st.SearchStrategy[int] = _ints(2, 5), order: int | st.SearchStrategy[int] = _ints(0, 1),
                 temperature: st.SearchStrategy[float] = st.sampled_from([0.5, 1.0, 2.0]), eos_token_id: Any = None) -> TableModel:
    """A random n-gram TableModel: standard-normal logits / temperature (see TableModel.random); a LayeredTableModel,
    so that drafts derived from it (early_exit, skip_layers, heads) work too."""
    V, n = _drawn(draw, vocab), _drawn(draw, order)
    return LayeredTableModel.random(V, n, seed=draw(_ints(0, 2**31 - 1)), temperature=draw(temperature), eos_token_id=_drawn(draw, eos_token_id))


@st.composite
def model_pairs(draw, vocab: int | st.SearchStrategy[int] = _ints(2, 5), order: int | st.SearchStrategy[int] = _ints(0, 1),
                eos_token_id: Any = None) -> dict[str, TableModel]:
    """{"target": ..., "draft": ...}: two table models of one vocabulary and order. The draft is
    an independent table, a noisy copy of the target (drafts that are often accepted), or the
    target itself (every draft accepted)."""
    V, n = _drawn(draw, vocab), _drawn(draw, order)
    eos = _drawn(draw, eos_token_id)
    target = draw(table_models(V, n, eos_token_id=eos))
    relation = draw(st.sampled_from(["independent", "noisy copy", "same"]))
    if relation == "independent":
        draft = draw(table_models(V, n))
    elif relation == "noisy copy":
        noise = torch.randn(target.logits.shape, generator=torch.Generator().manual_seed(draw(_ints(0, 2**31 - 1))))
        draft = LayeredTableModel(target.logits + draw(st.sampled_from([0.1, 0.5])) * noise)
    else:
        draft = target
    return {"target": target, "draft": draft}


@st.composite
def tied_logits(draw, rows: int | st.SearchStrategy[int] = _ints(1, 4), vocab: int | st.SearchStrategy[int] = _ints(1, 40),
                masked: bool = True) -> torch.Tensor:
    """Logits [rows, V] (float32) full of ties and near-ties: values on a coarse grid, some moved a few
    float32 steps (ulps) off it, and -inf (a token an earlier stage removed) when `masked`.

        >>> from hypothesis import given, settings
        >>> @settings(max_examples=5)
        ... @given(tied_logits(rows=2, vocab=5))
        ... def check(x):
        ...     assert x.shape == (2, 5) and x.dtype == torch.float32
        >>> check()
    """
    R, V = _drawn(draw, rows), _drawn(draw, vocab)
    grid = st.sampled_from([-4.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0] + ([float("-inf")] if masked else []))
    ulps = st.sampled_from([0, 0, 0, -2, -1, 1, 2])  # mostly exact ties
    cells = draw(st.lists(st.tuples(grid, ulps), min_size=R * V, max_size=R * V))
    x = torch.tensor([v for v, _ in cells], dtype=torch.float32).view(R, V)
    steps = torch.tensor([n for _, n in cells]).view(R, V).masked_fill(x.isinf(), 0)
    for _ in range(2):
        x = torch.where(steps != 0, torch.nextafter(x, steps.sign() * torch.tensor(float("inf"))), x)
        steps = steps - steps.sign()
    return x


def _scalar(param: registry.Param, cap: int) -> st.SearchStrategy:
    """Values of a number parameter inside its declared bounds: ints up to `cap`, floats on a 0.01 grid (the first
    2.0 of a range wider than 100, temperature's [0, 1e6]: past that every distribution is nearly uniform)."""
    low = param.low if param.low is not None else 0
    if param.type == "int":
        return _ints(int(low), int(param.high if param.high is not None else max(cap, low)))
    high = param.high if param.high is not None and param.high - low <= 100 else low + 2.0
    return _ints(round(low * 100), round(high * 100)).map(lambda x: x / 100)


@st.composite
def sampler_pipelines(draw, max_stages: int = 3, vocab: int = 6) -> Pipeline:
    """A sampler pipeline of registered stages with parameters inside their bounds (ints <= vocab)."""
    names = draw(st.lists(st.sampled_from(registry.names("sampler")), max_size=max_stages, unique=True))
    return [(n, {p.name: draw(_scalar(p, vocab)) for p in registry.lookup("sampler", n).params}) for n in names]


@st.composite
def conditions(draw, depth: int = 2) -> str:
    """An exit condition over registered draft statistics: `draft.prob < 0.3 or not draft.entropy > 1.2`."""
    if depth > 0 and draw(_ints(0, 2)) == 0:
        if draw(st.booleans()):
            return f"not ({draw(conditions(depth - 1))})"
        return f"({draw(conditions(depth - 1))}) {draw(st.sampled_from(['and', 'or']))} ({draw(conditions(depth - 1))})"
    stat = draw(st.sampled_from(registry.names("stat")))
    low, high = registry.lookup("stat", stat).values  # a threshold inside the statistic's range, up to 2.0
    return f"draft.{stat} {draw(st.sampled_from(['<', '<=', '>', '>=']))} {draw(_ints(round(low * 10), round(min(high, 2.0) * 10))) / 10}"


def _call(name: str, args: dict) -> str:
    return f"{name}({', '.join(f'{k} = {v}' for k, v in args.items())})" if args else name


@dataclass(frozen=True)
class Composition:
    """One decoder assembled from registered components: a sampler pipeline, a draft source, an
    optional exit policy and a verifier. `text` is its .dec source; `key` names its structure."""

    pipeline: tuple[tuple[str, tuple], ...]
    draft: tuple[str, tuple]
    exit: str | None
    verifier: tuple[str, tuple]

    @property
    def text(self) -> str:
        lines = ['target = model("target")']
        draft_args = dict(self.draft[1])
        if "draft" in draft_args.values():
            lines.append('draft = model("draft")')
        if self.pipeline:
            lines.append("sampler = " + " | ".join(_call(n, dict(a)) for n, a in self.pipeline))
        lines.append(f"propose = {_call(self.draft[0], draft_args)}")
        if self.exit:
            lines.append(f"stop = {self.exit}")
        lines.append(f"verify = {_call(self.verifier[0], dict(self.verifier[1]))}")
        return "decoder composed() {\n" + "".join(f"    {line}\n" for line in lines) + "}\n"

    @property
    def key(self) -> tuple:
        """The components, without their parameters: (draft, verifier, exit, sampler stages)."""
        exit_name = None if self.exit is None else self.exit.split()[0].split("(")[0]
        return (self.draft[0], self.verifier[0], exit_name, tuple(n for n, _ in self.pipeline))


def _component_args(draw, component: registry.Component, k: st.SearchStrategy[int]) -> tuple:
    args = []
    for p in component.params:
        if p.type == "model":
            args.append((p.name, "draft"))
        elif p.type == "int" and (p.required or p.name == "max"):  # a draft source's `max` bounds its speculation
            args.append((p.name, draw(k)))
        elif p.type == "float":
            args.append((p.name, draw(_scalar(p, 6))))
        elif p.type == "list[int]" and p.name == "widths" and (p.required or component.trees):  # a token tree's shape: at most 2 nodes, so exact checks stay small
            args.append((p.name, draw(st.sampled_from(["[1]", "[2]", "[1, 1]"]))))
        elif component.name == "dynamic_tree" and p.name in ("children", "depth"):  # a dynamic tree: at most 2 nodes too
            args.append((p.name, 1 if p.name == "depth" and dict(args)["children"] == 2 else draw(st.sampled_from([1, 2]))))
        elif component.name == "sequoia" and p.name in ("budget", "depth"):  # Sequoia's tree: at most 2 nodes too
            args.append((p.name, draw(st.sampled_from([1, 2]))))
        elif component.name == "eagle2_tree" and p.name in ("children", "expand", "depth", "nodes"):  # at most 2 nodes kept
            drafted = dict(args).get("children", 1) * dict(args).get("depth", 1)  # expand = 1: children * depth nodes drafted
            args.append((p.name, 1 if p.name == "expand" else draw(st.integers(1, min(2, drafted)) if p.name == "nodes" else st.sampled_from([1, 2]))))
        elif p.type == "list[int]" and p.name == "arms":  # a bandit's speculation lengths, each within the draft's max
            args.append((p.name, "[" + ", ".join(map(str, draw(st.lists(k, min_size=1, max_size=3, unique=True)))) + "]"))
        elif p.type == "draft":  # a nested draft source (staged's inner stage): prompt lookup, no model
            args.append((p.name, "lookup(ngram = 2, max = 2)"))
        elif not p.required:
            continue
        else:
            raise NotImplementedError(f"no strategy for the required {p.type} parameter '{p.name}' of {component.kind} '{component.name}'")
    return tuple(args)


@st.composite
def compositions(draw, k: st.SearchStrategy[int] = _ints(1, 3), max_stages: int = 2, verifiers: list[str] | None = None,
                 lossy: bool = False) -> Composition:
    """A Composition of registered components: draft source x verifier x exit policy x sampler pipeline.

    Verifiers whose contract declares them lossy (`typical`, `topk_match`) are drawn only with lossy=True
    (or when named in `verifiers`): a lossless property test over compositions checks what claims to be lossless.
    """
    pipeline = tuple((n, tuple(a.items())) for n, a in draw(sampler_pipelines(max_stages)))
    names = verifiers or [n for n in registry.names("verifier") if lossy or registry.lookup("verifier", n).contract.lossless is not False]
    takes_trees = [n for n in names if registry.lookup("verifier", n).trees]  # a token tree needs a verifier that takes one
    draft = draw(st.sampled_from([d for d in registry.components("draft") if (takes_trees or not d.trees) and not d.needs_grammar]))
    verifier = registry.lookup("verifier", draw(st.sampled_from(takes_trees if draft.trees else names)))
    if draft.trees:  # penalty stages read the tokens before each position, which a token tree does not give them yet
        from decspec.stdlib.samplers import needs_context

        pipeline = tuple(s for s in pipeline if not needs_context((s,)))
    exits = registry.components("exit")
    reads_a_model = any(p.type == "model" for p in draft.params) and not draft.trees  # an exit policy reads the draft model's statistics (a static tree has none)
    reads_a_model = reads_a_model and not any(p.type == "draft" for p in draft.params)  # staged: `stop` goes to its inner draft, lookup here
    exit_ = draw(st.none() | st.sampled_from(exits)) if exits and reads_a_model else None
    draft_args = _component_args(draw, draft, k)
    if exit_ is None:
        stop = None
    elif [p.type for p in exit_.params] == ["cond"]:
        stop = f"{exit_.name} {draw(conditions())}"
    else:  # ints (a bandit's arms) within the draft's max
        stop = _call(exit_.name, dict(_component_args(draw, exit_, st.integers(1, dict(draft_args).get("max", 1)))))
    return Composition(pipeline, (draft.name, draft_args), stop, (verifier.name, _component_args(draw, verifier, k)))


def specs(**kwargs) -> st.SearchStrategy[str]:
    """The .dec source of a random composition (`compositions(**kwargs)`), ready for decspec.compile."""
    return compositions(**kwargs).map(lambda c: c.text)
