"""The component reference: every registered component, grouped by kind, as markdown.

docs/language.md holds this text between its `<!-- components:begin -->` and
`<!-- components:end -->` lines; `python -m decspec.dsl.reference --write docs/language.md`
refreshes it after a component is added.

    >>> "#### `top_p(p: float)`" in component_reference()
    True
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from decspec.stdlib import registry
from decspec.stdlib.registry import Component, Param

BEGIN = "<!-- components:begin -->"
END = "<!-- components:end -->"

# Per kind: a section title and where a spec uses components of that kind.
_KINDS = {
    "model": ("Models", "Fill the `target` slot and model-typed parameters, e.g. `autoregressive(model(\"draft\"))`."),
    "sampler": ("Samplers", "Fill the `sampler` slot, alone or chained with `|`; applied left to right to target and draft alike."),
    "draft": ("Draft sources", "Fill the `propose` slot: where drafted tokens come from."),
    "exit": ("Exit policies", "Fill the `stop` slot: when drafting stops within a round (always bounded by the draft's `max`)."),
    "verifier": ("Verifiers", "Fill the `verify` slot: which drafted tokens the target accepts."),
    "stat": ("Draft statistics", "Read in `when` conditions as `draft.NAME`, compared with numbers."),
    "grammar": ("Grammars", "Fill the `grammar` slot: the language the output must belong to (structured output). "
                "The grammar's mask is applied to the logits of the target and of every draft before the sampler pipeline."),
    "search": ("Search strategies", "Fill the `search` slot: decoding that keeps several hypotheses per prompt instead of "
               "sampling one token per row: beam search (see [Beam search](#beam-search)), or n samples of the spec's round "
               "with one picked (see [Best-of-n, self-consistency and MBR](#best-of-n-self-consistency-and-mbr))."),
    "denoise": ("Denoising schedules", "Fill the `denoise` slot of a masked-diffusion decoder: how the generated positions, all "
                "masked at first, are unmasked (see [Diffusion decoding](#diffusion-decoding))."),
    "unmask": ("Unmasking rules", "The `unmask` argument of `blocks(...)`: which masked positions a denoising step commits."),
}


def component_reference() -> str:
    """Markdown for every registered component, grouped by kind: how it is written, its
    parameters (type, default, bounds, meaning), description, citation and lossless contract.

        >>> component_reference().splitlines()[0]
        '### Models'
    """
    out: list[str] = []
    for kind in registry.KINDS:
        comps = registry.components(kind)
        if not comps:
            continue
        title, where = _KINDS.get(kind, (kind.capitalize(), ""))
        out += [f"### {title}", "", where, ""] if where else [f"### {title}", ""]
        for comp in comps:
            out += _component(comp)
    return "\n".join(out).rstrip() + "\n"


def _component(comp: Component) -> list[str]:
    out = [f"#### `{usage(comp)}`", "", comp.doc, ""]
    if comp.params:
        out += ["| parameter | type | default | bounds | meaning |", "|---|---|---|---|---|"]
        out += [_param_row(p) for p in comp.params]
        out.append("")
    if comp.values is not None:
        out.append(f"- values: `{comp.values[0]} <= {usage(comp)} <= {comp.values[1]}` (a threshold compared with it must lie here)")
    contract = {True: "lossless", False: "lossy", None: "not applicable"}[comp.contract.lossless]
    out.append(f"- contract: {contract}" + (f" — {comp.contract.reason}" if comp.contract.reason else ""))
    if comp.cite:
        out.append(f"- cite: {comp.cite}")
    out.append("")
    return out


def usage(comp: Component) -> str:
    """How a spec writes the component: `top_p(p: float)`, `rejection`, `when COND`, `draft.prob`."""
    if comp.kind == "stat":
        return f"draft.{comp.name}"
    if comp.kind == "exit" and comp.name == "when":
        return "when COND"
    return comp.signature if comp.params else comp.name


def _param_row(p: Param) -> str:
    default = "required" if p.required else f"`{p.default!r}`"
    if p.low is not None and p.high is not None:
        bounds = f"{p.low} <= {p.name} <= {p.high}"
    elif p.low is not None:
        bounds = f"{p.name} >= {p.low}"
    elif p.high is not None:
        bounds = f"{p.name} <= {p.high}"
    else:
        bounds = ""
    bounds = f"`{bounds}`" if bounds else ""
    return f"| `{p.name}` | {p.type} | {default} | {bounds} | {p.doc} |"


def with_reference(document: str) -> str:
    """The document with the text between the BEGIN and END lines replaced by the current
    component reference. Raises ValueError when the markers are missing."""
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the document needs the lines {BEGIN} and {END}")
    return document[: start + len(BEGIN)] + "\n" + component_reference() + document[end:]


def main(argv: list[str] | None = None) -> int:
    """`python -m decspec.dsl.reference [--write docs/language.md]`: print the reference, or
    rewrite it into a document in place."""
    parser = argparse.ArgumentParser(prog="python -m decspec.dsl.reference", description=main.__doc__)
    parser.add_argument("--write", metavar="DOC", help="markdown file to update between the component markers")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(component_reference())
        return 0
    path = Path(args.write)
    path.write_text(with_reference(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
