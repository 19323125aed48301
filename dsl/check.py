"""Check a parsed .dec module and build the Spec of one decoder.

Resolves imports (relative to the importing file), selects the decoder, binds its typed
parameters (defaults, then overrides), flattens `extends`, resolves every slot against the
component registry and checks the slots fit together. All errors found are raised together
as one DecError; unused model bindings become warnings on the Spec.

    >>> spec = load('''
    ... decoder speculative(k: int = 4) {
    ...     target  = model("target")
    ...     draft   = model("draft")
    ...     propose = autoregressive(draft, max = k)
    ...     verify  = rejection
    ... }''', overrides={"k": "6"})
    >>> str(spec.slot("propose")), spec.params
    ('autoregressive(model=model(name="draft"), max=6)', (('k', 6),))
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from decspec.dsl import ast
from decspec.dsl.diagnostics import DecError, Diagnostic, Source, Span, did_you_mean
from decspec.dsl.files import UnreadableFile, read_text
from decspec.dsl.parser import parse
from decspec.dsl.resolve import BAD, Resolver, Scope, bind_arguments
from decspec.dsl.spec import Spec
from decspec.dsl.values import PARAM_TYPES, Mismatch, coerce, expected, from_text
from decspec.stdlib.registry import SAMPLED_SEARCHES, SLOTS

_MISSING: Any = type("Missing", (), {})()
Bindings = dict[str, tuple[ast.Binding, Scope]]


def load(source_or_path: str | os.PathLike | Source, overrides: Mapping[str, Any] | None = None,
         decoder: str | None = None) -> Spec:
    """Parse and check a spec: a path to a .dec file, spec text (a string with `{` or a
    newline), or a Source. `overrides` replace parameter defaults: Python values from the
    API, or strings from the CLI (`{"k": "6"}`), read according to the declared type.

        >>> load('decoder d(t: float = 1) { target = model("m"); sampler = temperature(t) }',
        ...      overrides={"t": 0.5}).slot("sampler")[0].arg("t")
        0.5
    """
    if isinstance(source_or_path, Source):
        source = source_or_path
        base_dir = Path(source.name).parent if Path(source.name).is_file() else Path.cwd()
    elif isinstance(source_or_path, str) and ("{" in source_or_path or "\n" in source_or_path):
        source, base_dir = Source(source_or_path), Path.cwd()
    else:
        path = spec_path(source_or_path)
        text = _read_text(path, f"cannot read spec file {str(path)!r}", None)
        source, base_dir = Source(text, str(path), quotable=0), path.parent  # quotable once it parses as .dec
    try:
        module = parse(source)
    except RecursionError:
        raise DecError("the spec is nested too deeply to parse", Span(source, 0, 0)) from None
    return check_module(module, overrides, decoder, base_dir)


def check_module(module: ast.Module, overrides: Mapping[str, Any] | None = None, decoder: str | None = None,
                 base_dir: str | os.PathLike | None = None) -> Spec:
    """Check a parsed module and return the Spec of its selected decoder.

    The decoder is `decoder` if given, else the one named like the file, else the last one
    the file defines. Imports resolve against `base_dir` (default: the current directory).

        >>> check_module(parse('decoder d() { target = model("m") }')).slot("target").arg("name")
        'm'
    """
    errors: list[Diagnostic] = []
    try:
        spec = _check(module, dict(overrides or {}), decoder, _base_dir(module.source, base_dir), errors)
    except RecursionError:
        errors.append(Diagnostic("the spec is nested too deeply to check", Span(module.source, 0, 0)))
        spec = None
    if errors or spec is None:
        raise DecError(_in_order(errors) or [Diagnostic("no decoder to check", Span(module.source, 0, 0))])
    return spec


def _base_dir(source: Source, base_dir: str | os.PathLike | None) -> Path:
    """Where imports resolve: base_dir if given, else the spec file's folder, else the cwd."""
    if base_dir is not None:
        return Path(base_dir)
    return Path(source.name).parent if Path(source.name).is_file() else Path.cwd()


def _check(module: ast.Module, overrides: dict[str, Any], decoder: str | None, base_dir: Path,
           errors: list[Diagnostic]) -> Spec | None:
    key = _file_key(Path(module.source.name)) if Path(module.source.name).is_file() else module.source.name
    unit = _Imports(errors).unit(module, base_dir, key, ())
    chosen = _select(unit, decoder, errors)
    if chosen is None:
        return None
    defn, home = chosen
    params = _bind_params(defn, lambda decl, type_: _override(decl, type_, overrides, errors), errors)
    _unknown_overrides(defn, overrides, errors)
    bindings, complete = _assemble(defn, home, params, errors, ((home.key, defn.name),))
    resolver = Resolver(bindings, errors)
    slots: list[tuple[str, Any]] = []
    for slot, kind in SLOTS.items():
        if slot == "sampler":  # always present: a pipeline, () for plain softmax
            stages = resolver.binding(slot, kind, bindings[slot][0].name_span) if slot in bindings else ()
            slots.append((slot, stages if isinstance(stages, tuple) else (stages,)))
        elif slot in bindings:
            slots.append((slot, resolver.binding(slot, kind, bindings[slot][0].name_span)))
    if complete:  # with a base missing, slots it would give may be missing too
        _check_slots(defn, bindings, errors, getattr(dict(slots).get("search"), "name", None))
    warnings = _unused(defn, resolver, bindings, params, errors)
    return Spec(defn.name, tuple(params.items()), tuple(slots), home.module.source, defn.span, tuple(warnings))


# --- imports -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """A checked file: its module, its own decoders, and the decoders it can see (its own and
    the imported ones)."""

    module: ast.Module
    key: str
    own: tuple[ast.DecoderDef, ...]
    visible: dict[str, tuple[ast.DecoderDef, "_Unit"]] = field(default_factory=dict, compare=False)


class _Imports:
    def __init__(self, errors: list[Diagnostic]):
        self.errors = errors
        self.units: dict[str, _Unit] = {}

    def unit(self, module: ast.Module, base_dir: Path, key: str, chain: tuple[str, ...]) -> _Unit:
        own: dict[str, ast.DecoderDef] = {}
        for item in module.items:
            if isinstance(item, ast.DecoderDef):
                if item.name in own:
                    self.errors.append(Diagnostic(f"decoder '{item.name}' is defined twice", item.name_span,
                                                  hint=f"first defined at {own[item.name].name_span}"))
                else:
                    own[item.name] = item
        unit = _Unit(module, key, tuple(own.values()))
        for item in module.items:
            if isinstance(item, ast.Import):
                other = self.imported(item, module.source, base_dir, chain + (key,))
                for name, entry in (other.visible.items() if other else ()):
                    prev = unit.visible.get(name)
                    if prev is not None and prev[0] is not entry[0]:
                        self.errors.append(Diagnostic(
                            f"decoder '{name}' is defined in both {prev[1].module.source.name} and {entry[1].module.source.name}",
                            item.span))
                    unit.visible[name] = entry
        unit.visible.update({name: (d, unit) for name, d in own.items()})
        return unit

    def imported(self, imp: ast.Import, importer: Source, base_dir: Path, chain: tuple[str, ...]) -> _Unit | None:
        display = os.path.normpath(os.path.join(os.path.dirname(importer.name), imp.path)) if imp.path else imp.path
        try:
            path = Path(_file_key(base_dir / imp.path))
        except (OSError, ValueError, RuntimeError):
            self.errors.append(Diagnostic(f"cannot import '{imp.path}': not a valid path", imp.span))
            return None
        key = str(path)
        if key in chain:
            cycle = [Path(k).name for k in chain[chain.index(key):]] + [path.name]
            self.errors.append(Diagnostic(f"import cycle: {' -> '.join(cycle)}", imp.span))
            return None
        if key not in self.units:
            try:
                module = parse(Source(_read_text(path, f"cannot import '{imp.path}'", imp.span), display, quotable=0))
            except DecError as e:
                first = e.diagnostics[0]
                if first.span is not None and first.span.source.quotable == 0:  # none of it parsed: say so at the import
                    self.errors.append(Diagnostic(f"cannot import '{imp.path}': {first.span}: {first.message}", imp.span))
                else:
                    self.errors.extend(e.diagnostics)
                return None
            self.units[key] = self.unit(module, path.parent, key, chain)
        return self.units[key]


def _file_key(path: Path) -> str:
    return str(path.resolve())


def shipped_specs() -> list[str]:
    """The names of the example specs that ship with decspec (`decspec run speculative`)."""
    folder = _shipped_folder()
    return sorted(p.stem for p in folder.glob("*.dec")) if folder is not None else []


def _shipped_folder() -> Path | None:
    """The folder of the package decspec.specs (the checkout's specs/ in an editable install)."""
    from importlib.resources import files

    folder = Path(str(files("decspec.specs")))
    return folder if folder.is_dir() else None


def _exists(path: Path, test: str = "exists") -> bool:
    """path.exists() (or another test: "is_file"), False where the OS refuses to look (a name too long, a NUL byte):
    such a "path" is no file."""
    try:
        return getattr(path, test)()
    except (OSError, ValueError):
        return False


def spec_path(given: str | os.PathLike) -> Path:
    """A spec's file: the path given, or, when no such file exists and it is a bare name (`speculative`,
    `speculative.dec`), the example spec of that name that ships with decspec. A name that is neither is a
    DecError listing the shipped names."""
    path = Path(os.fspath(given))
    name = path.stem if path.suffix == ".dec" else path.name
    if len(path.parts) != 1 or not re.fullmatch(r"[A-Za-z0-9_-]+", name) or _exists(path):
        folder = _shipped_folder()
        if (folder is not None and path.suffix == ".dec" and path.parent.name == "specs" and not _exists(path)
                and _exists(folder / path.name, "is_file")):
            raise DecError(f"no spec file {str(path)!r} here (the shipped specs are in the checkout's specs/ folder)",
                           hint=f"the shipped spec is addressable by name from anywhere: {path.stem}")
        return path  # a path: read as it is (and refused as unreadable there)
    folder = _shipped_folder()
    if folder is not None and _exists(folder / f"{name}.dec", "is_file"):
        return folder / f"{name}.dec"
    names = shipped_specs()
    shown_path = str(path) if len(str(path)) <= 120 else str(path)[:100] + f"... ({len(str(path))} characters)"
    raise DecError(f"no spec file {shown_path!r}, and no shipped spec named {name[:100]!r}",
                   hint=did_you_mean(name, names) or (f"shipped specs: {', '.join(names)}" if names else None))


def _read_text(path: Path, what: str, span: Span | None) -> str:
    """The text of a .dec file (a regular UTF-8 file of bounded size: dsl/files.py), or a DecError."""
    try:
        return read_text(path, "a .dec spec")
    except UnreadableFile as e:
        raise DecError(f"{what}: {e}", span) from None


# --- the decoder, its parameters and its bindings ------------------------------------------


def _select(unit: _Unit, decoder: str | None, errors: list[Diagnostic]) -> tuple[ast.DecoderDef, _Unit] | None:
    source = unit.module.source
    if decoder is not None:
        if decoder in unit.visible:
            return unit.visible[decoder]
        known = sorted(unit.visible)
        hint = did_you_mean(decoder, known) or (f"decoders: {', '.join(known)}" if known else None)
        errors.append(Diagnostic(f"no decoder named '{decoder}' in {source.name}", None, hint=hint))
        return None
    stem = Path(source.name).stem
    if stem in unit.visible:
        return unit.visible[stem]
    if unit.own:
        return unit.own[-1], unit
    errors.append(Diagnostic(f"no decoder in {source.name}", Span(source, 0, 0),
                             hint='define one: decoder NAME() { target = model("target") }'))
    return None


def _param_type(decl: ast.ParamDecl, errors: list[Diagnostic]) -> str | None:
    name = str(decl.type)
    if name in PARAM_TYPES:
        return name
    hint = did_you_mean(name, PARAM_TYPES) or f"types: {', '.join(PARAM_TYPES)}"
    errors.append(Diagnostic(f"unknown type '{name}'", decl.type.span, hint=hint))
    return None


def _bind_params(defn: ast.DecoderDef, supply: Callable[[ast.ParamDecl, str | None], Any],
                 errors: list[Diagnostic], missing: Callable[[ast.ParamDecl], None] | None = None) -> dict[str, Any]:
    """Each declared parameter in order: the supplied value, else its default (which may use
    earlier parameters), else an error. Defaults are type-checked even when overridden."""
    bound: dict[str, Any] = {}
    resolver = Resolver({}, errors)
    for decl in defn.params:
        if decl.name in bound:
            errors.append(Diagnostic(f"parameter '{decl.name}' is declared twice", decl.span))
            continue
        type_ = _param_type(decl, errors)
        default = _MISSING
        if decl.default is not None and type_ is not None:
            default = resolver.typed(decl.default, type_, Scope(dict(bound), defn.name))
        value = supply(decl, type_)
        if value is _MISSING:
            value = default if type_ is not None else BAD
        if value is _MISSING:
            value = BAD
            if missing is not None:
                missing(decl)
            else:
                errors.append(Diagnostic(f"parameter '{decl.name}' has no default and no value was given", decl.span,
                                         hint=f"pass it as an override, e.g. {decl.name}=..."))
        bound[decl.name] = value
    return bound


def _override(decl: ast.ParamDecl, type_: str | None, overrides: Mapping[str, Any], errors: list[Diagnostic]) -> Any:
    if decl.name not in overrides:
        return _MISSING
    raw = overrides[decl.name]
    if type_ is None:
        return BAD
    if isinstance(raw, str) and type_ != "str":
        try:
            raw = from_text(raw, type_)
        except ValueError:
            errors.append(Diagnostic(f"cannot read override {decl.name}={raw!r} as {expected(type_)}", decl.span))
            return BAD
    try:
        return coerce(raw, type_)
    except Mismatch as e:
        errors.append(Diagnostic(f"override {decl.name} must be {expected(type_)}, found {e.found}", decl.span))
        return BAD


def _unknown_overrides(defn: ast.DecoderDef, overrides: Mapping[str, Any], errors: list[Diagnostic]) -> None:
    declared = [p.name for p in defn.params]
    for name in overrides:
        if name not in declared:
            hint = did_you_mean(str(name), declared) or (f"parameters: {', '.join(declared)}" if declared else "it takes no parameters")
            errors.append(Diagnostic(f"unknown parameter '{name}' in overrides for decoder '{defn.name}'", defn.name_span, hint=hint))


def _assemble(defn: ast.DecoderDef, unit: _Unit, params: dict[str, Any], errors: list[Diagnostic],
              chain: tuple[tuple[str, str], ...]) -> tuple[Bindings, bool]:
    """The bindings of a decoder: its base's (evaluated with the base's parameters), then its
    own; and whether every base was found."""
    scope = Scope(params, defn.name)
    merged, complete = _inherit(defn, unit, scope, errors, chain) if defn.base is not None else ({}, True)
    own: dict[str, ast.Binding] = {}
    for b in defn.body:
        if b.name in own:
            errors.append(Diagnostic(f"'{b.name}' is bound twice in decoder '{defn.name}'", b.name_span,
                                     hint=f"first bound at {own[b.name].name_span}"))
            continue
        if b.name not in SLOTS and b.name in params:
            errors.append(Diagnostic(f"binding '{b.name}' has the same name as a parameter of '{defn.name}'", b.name_span,
                                     hint="in expressions the parameter wins; rename the binding"))
        own[b.name] = b
    merged.update({name: (b, scope) for name, b in own.items()})
    return merged, complete


def _inherit(defn: ast.DecoderDef, unit: _Unit, scope: Scope, errors: list[Diagnostic],
             chain: tuple[tuple[str, str], ...]) -> tuple[Bindings, bool]:
    call = defn.base
    if call.func not in unit.visible:
        hint = did_you_mean(call.func, unit.visible) or "a base decoder must be defined in this file or an imported one"
        errors.append(Diagnostic(f"unknown decoder '{call.func}'", call.func_span, hint=hint))
        return {}, False
    base, home = unit.visible[call.func]
    if (home.key, base.name) in chain:
        names = [name for _, name in chain] + [base.name]
        errors.append(Diagnostic(f"extends cycle: {' -> '.join(names)}", call.func_span))
        return {}, False
    given = bind_arguments([p.name for p in base.params], call, f"decoder '{base.name}'", errors)
    args = Resolver({}, errors)

    def supply(decl: ast.ParamDecl, type_: str | None) -> Any:
        if decl.name not in given:
            return _MISSING
        return args.typed(given[decl.name], type_, scope) if type_ is not None else BAD

    def missing(decl: ast.ParamDecl) -> None:
        errors.append(Diagnostic(f"missing argument '{decl.name}' for decoder '{base.name}'", call.span,
                                 hint=f"'{decl.name}' has no default in {decl.span}"))

    base_params = _bind_params(base, supply, errors, missing)
    return _assemble(base, home, base_params, errors, chain + ((home.key, base.name),))


# --- whole-decoder checks ------------------------------------------------------------------


def _check_slots(defn: ast.DecoderDef, bindings: Bindings, errors: list[Diagnostic], search: str | None = None) -> None:
    def at(slot: str) -> Span:
        return bindings[slot][0].name_span

    if "target" not in bindings:
        errors.append(Diagnostic(f"decoder '{defn.name}' has no target", defn.name_span,
                                 hint='add `target = model("target")`'))
    if "propose" in bindings and "verify" not in bindings:
        errors.append(Diagnostic("'propose' needs a 'verify' slot to check the drafts", at("propose"),
                                 hint="add `verify = rejection` (lossless sampling) or `verify = greedy`"))
    if "stop" in bindings and "propose" not in bindings:
        errors.append(Diagnostic("'stop' needs a 'propose' slot: it decides when drafting stops", at("stop"),
                                 hint="add e.g. `propose = autoregressive(model(\"draft\"))`"))
    if "verify" in bindings and "propose" not in bindings:
        errors.append(Diagnostic("'verify' needs a 'propose' slot: there are no drafts to verify", at("verify"),
                                 hint="add e.g. `propose = autoregressive(model(\"draft\"))`, or remove `verify`"))
    if "search" in bindings and search not in SAMPLED_SEARCHES:  # beam search keeps several hypotheses per prompt: no drafts,
        for slot in ("propose", "stop", "verify"):                # no round to speculate in (a sampled search runs rounds)
            if slot in bindings:
                errors.append(Diagnostic(f"'search' cannot be combined with '{slot}': beam search scores whole hypotheses "
                                         "with the target alone", at(slot),
                                         hint=f"remove `{slot}`, or remove `search` (at {at('search')}); the sampling searches "
                                              f"({', '.join(SAMPLED_SEARCHES)}) run any propose/verify round"))
    if "denoise" in bindings:  # masked diffusion unmasks positions anywhere in a block: no causal round to draft in
        for slot in ("propose", "stop", "verify", "search"):
            if slot in bindings:
                errors.append(Diagnostic(f"'denoise' cannot be combined with '{slot}': a diffusion decoder unmasks whole blocks "
                                         "of positions with the target alone (its draft-verify form is `denoise = draft_verify(...)`)",
                                         at(slot), hint=f"remove `{slot}`, or remove `denoise` (at {at('denoise')})"))


def _unused(defn: ast.DecoderDef, resolver: Resolver, bindings: Bindings, params: Mapping[str, Any],
            errors: list[Diagnostic]) -> list[Diagnostic]:
    """Unused local bindings of the decoder's own block: a model is a warning, anything else an error."""
    warnings: list[Diagnostic] = []
    seen: set[str] = set()
    for b in defn.body:
        if b.name in seen or b.name in SLOTS or b.name in resolver.used or b.name in params:
            continue
        seen.add(b.name)
        probe_errors: list[Diagnostic] = []
        if Resolver(bindings, probe_errors).binding(b.name, "model", b.name_span) is not BAD and not probe_errors:
            warnings.append(Diagnostic(f"unused model binding '{b.name}'", b.name_span, "warning",
                                       hint="remove it, or use it, e.g. `propose = autoregressive(" + b.name + ")`"))
        else:
            hint = did_you_mean(b.name, SLOTS) or f"the slots are {', '.join(SLOTS)}; any other binding must be used"
            errors.append(Diagnostic(f"unused binding '{b.name}'", b.name_span, hint=hint))
    return warnings


def _in_order(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Without duplicates; those without a position first, then by file (first seen) and offset."""
    files: dict[str, int] = {}
    unique: dict[tuple, Diagnostic] = {}
    for d in diagnostics:
        where = (d.span.source.name, d.span.start, d.span.end) if d.span else None
        unique.setdefault((d.message, where), d)
        if d.span:
            files.setdefault(d.span.source.name, len(files))
    return sorted(unique.values(), key=lambda d: (d.span is not None, files[d.span.source.name] if d.span else 0,
                                                   d.span.start if d.span else 0))
