"""Checking .dec modules into Specs: resolution, overrides, extends, imports, diagnostics."""
from __future__ import annotations

import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decspec.dsl.check import check_module, load
from decspec.dsl.diagnostics import DecError, Source
from decspec.dsl.parser import parse
from decspec.dsl.spec import Cond, Instance, Stat
from decspec.stdlib.registry import lookup

SPECULATIVE = '''
decoder speculative(k: int = 4, temperature: float = 0.8) {
    target  = model("target")
    draft   = model("draft")
    sampler = temperature(temperature) | top_p(0.95)
    propose = autoregressive(draft, max = k)
    stop    = when draft.prob < 0.3 or draft.entropy > 2.5
    verify  = rejection
}
'''
GREEDY_SPEC = SPECULATIVE + '''
decoder greedy_spec(k: int = 4) extends speculative(k = k, temperature = 0.0) {
    sampler = greedy
    verify  = greedy
}
'''


def decoder(*lines: str, params: str = "", target: bool = True) -> str:
    """A one-decoder spec named d, one binding per line, with a target unless told otherwise."""
    body = (['target = model("target")'] if target else []) + list(lines)
    return f"decoder d({params}) {{\n" + "\n".join("    " + line for line in body) + "\n}\n"


def errors(src, **kw):
    with pytest.raises(DecError) as info:
        load(src, **kw)
    return info.value.diagnostics


def error(src, **kw):
    (d,) = errors(src, **kw)
    return d


def where(d) -> str:
    return f"{d.span.line}:{d.span.col}"


def names(stages) -> list[str]:
    return [str(s) for s in stages]


# --- resolution ------------------------------------------------------------------------------


def test_speculative_spec():
    spec = load(SPECULATIVE)
    assert spec.name == "speculative"
    assert spec.params == (("k", 4), ("temperature", 0.8))
    assert [slot for slot, _ in spec.slots] == ["target", "sampler", "propose", "stop", "verify"]
    assert spec.slot("target") == Instance(lookup("model", "model"), (("name", "target"),))
    assert names(spec.slot("sampler")) == ["temperature(t=0.8)", "top_p(p=0.95)"]
    propose = spec.slot("propose")
    assert propose.component is lookup("draft", "autoregressive")
    assert propose.args == (("model", Instance(lookup("model", "model"), (("name", "draft"),))), ("max", 4))
    prob, entropy = Stat(lookup("stat", "prob")), Stat(lookup("stat", "entropy"))
    assert spec.slot("stop") == Instance(lookup("exit", "when"), (("cond", Cond("or", (Cond("<", (prob, 0.3)), Cond(">", (entropy, 2.5))))),))
    assert spec.slot("verify") == Instance(lookup("verifier", "rejection"), ())
    assert spec.models == ("target", "draft") and spec.warnings == ()
    assert spec.source.text == SPECULATIVE and spec.span.source.text[spec.span.start:].startswith("decoder speculative")


def test_instance_spans_point_at_the_spec():
    spec = load(SPECULATIVE)
    span = spec.slot("propose").span
    assert SPECULATIVE[span.start:span.end] == "autoregressive(draft, max = k)"


def test_sampler_forms():
    assert load(decoder()).slot("sampler") == ()
    assert names(load(decoder("sampler = greedy")).slot("sampler")) == ["greedy"]
    assert names(load(decoder("sampler = top_k(5)")).slot("sampler")) == ["top_k(k=5)"]
    nested = decoder("base = temperature(0.7) | top_k(40)", "sampler = base | top_p(0.9)")
    assert names(load(nested).slot("sampler")) == ["temperature(t=0.7)", "top_k(k=40)", "top_p(p=0.9)"]


def test_name_resolves_by_expected_kind():
    spec = load(decoder("g = greedy", "sampler = g", "propose = autoregressive(target)", "verify = g"))
    assert spec.slot("sampler")[0].component is lookup("sampler", "greedy")
    assert spec.slot("verify").component is lookup("verifier", "greedy")
    assert spec.slot("propose").arg("model") == spec.slot("target")


def test_keyword_and_positional_args_fill_defaults():
    spec = load(decoder("propose = autoregressive(model = target)", "verify = rejection"))
    assert spec.slot("propose").args[1] == ("max", 4)


def test_local_scalar_bindings_and_folding():
    spec = load(decoder("n = 2 * 3", "propose = autoregressive(target, max = n - 1)", "verify = rejection",
                        "sampler = temperature(1 / 2) | top_k(-(-2))"))
    assert spec.slot("propose").arg("max") == 5
    t = spec.slot("sampler")[0].arg("t")
    assert t == 0.5 and isinstance(t, float)
    assert spec.slot("sampler")[1].arg("k") == 2


def test_int_is_accepted_for_float_and_division_gives_float():
    t = load(decoder("sampler = temperature(1)")).slot("sampler")[0].arg("t")
    assert t == 1.0 and isinstance(t, float)
    d = error(decoder("sampler = top_k(4 / 2)"))
    assert d.message == "expected an int, found a float (2.0)" and where(d) == "3:21"


def test_conditions_fold_and_normalize():
    def stop(cond: str):
        return load(decoder("propose = autoregressive(target)", "verify = rejection", f"stop = when {cond}")).slot("stop").arg("cond")

    prob = Stat(lookup("stat", "prob"))
    assert stop("0.3 > draft.prob") == Cond("<", (prob, 0.3))
    assert stop("draft.prob <= 0.1 + 0.2") == Cond("<=", (prob, 0.1 + 0.2))
    assert stop("true and draft.prob == 1") == Cond("==", (prob, 1))
    assert stop("false or not (draft.prob != 0.5)") == Cond("not", (Cond("!=", (prob, 0.5)),))
    assert stop("1 < 2") is True and stop("false") is False
    assert stop("draft.prob > -1e-3 + 0.5") == Cond(">", (prob, -1e-3 + 0.5))  # a negative literal folds
    assert type(stop("draft.prob < 1").operands[1]) is float


def test_condition_through_parameter_and_local():
    src = decoder("c = draft.prob < t", "propose = autoregressive(target)", "verify = rejection", "stop = when c",
                  params="t: float = 0.25")
    assert str(load(src).slot("stop").arg("cond")) == "draft.prob < 0.25"


def test_parameter_defaults_may_use_earlier_parameters():
    spec = load(decoder("propose = autoregressive(target, max = m)", "verify = greedy", params="k: int = 3, m: int = k * 2"))
    assert spec.params == (("k", 3), ("m", 6)) and spec.slot("propose").arg("max") == 6
    assert load(decoder(params="k: int = 3, m: int = k * 2"), overrides={"k": 5}).params == (("k", 5), ("m", 10))


def test_list_parameters():
    spec = load(decoder(params="arms: list[int] = [2, 4], names: list[str] = []"))
    assert spec.params == (("arms", (2, 4)), ("names", ()))
    d = error(decoder(params="arms: list[int] = [2, 4.5]"))
    assert d.message == "expected an int in this list, found a float (4.5)" and where(d) == "1:33"


# --- overrides -------------------------------------------------------------------------------


def test_api_overrides():
    spec = load(SPECULATIVE, overrides={"k": 6, "temperature": 1})
    assert spec.params == (("k", 6), ("temperature", 1.0)) and isinstance(spec.params[1][1], float)
    assert spec.slot("propose").arg("max") == 6


@pytest.mark.parametrize("params, given, bound", [
    ("k: int = 4", "6", 6),
    ("k: int = 4", "-2", -2),
    ("t: float = 0.5", "1e-3", 1e-3),
    ("t: float = 0.5", "2", 2.0),
    ("b: bool = false", "true", True),
    ("b: bool = true", "False", False),
    ("s: str = 'a'", "6", "6"),
    ("arms: list[int] = [1]", "2,4,8", (2, 4, 8)),
    ("arms: list[float] = [1]", "[0.5, 1]", (0.5, 1.0)),
])
def test_cli_overrides(params, given, bound):
    name = params.split(":")[0]
    assert load(decoder(params=params), overrides={name: given}).params == ((name, bound),)


@pytest.mark.parametrize("params, given, message", [
    ("k: int = 4", "abc", "cannot read override k='abc' as an int"),
    ("k: int = 4", "2.5", "cannot read override k='2.5' as an int"),
    ("b: bool = true", "yes", "cannot read override b='yes' as a bool"),
    ("k: int = 4", True, "override k must be an int, found a bool (true)"),
    ("k: int = 4", 2.5, "override k must be an int, found a float (2.5)"),
    ("s: str = 'a'", 3, "override s must be a string, found an int (3)"),
])
def test_bad_overrides(params, given, message):
    name = params.split(":")[0]
    d = error(decoder(params=params), overrides={name: given})
    assert d.message == message and where(d) == "1:11"


def test_unknown_override_suggests_a_parameter():
    d = error(SPECULATIVE, overrides={"kk": 2})
    assert d.message == "unknown parameter 'kk' in overrides for decoder 'speculative'"
    assert d.hint == "did you mean 'k'?" and where(d) == "2:9"


def test_parameter_without_default():
    d = error(decoder(params="k: int"))
    assert d.message == "parameter 'k' has no default and no value was given" and where(d) == "1:11"
    assert load(decoder(params="k: int"), overrides={"k": "3"}).params == (("k", 3),)


def test_override_out_of_bounds_points_at_the_use():
    d = error(SPECULATIVE, overrides={"k": 100})
    assert d.message == "autoregressive's 'max' must be between 1 and 64, found 100"
    assert where(d) == "6:43" and d.hint == "the value comes from parameter 'k'"


# --- extends ---------------------------------------------------------------------------------


def test_extends():
    spec = load(GREEDY_SPEC, overrides={"k": "6"})
    assert spec.name == "greedy_spec" and spec.params == (("k", 6),)
    assert names(spec.slot("sampler")) == ["greedy"]
    assert spec.slot("verify").component is lookup("verifier", "greedy")
    assert spec.slot("propose").arg("max") == 6  # the base's binding, with the child's argument
    assert str(spec.slot("stop").arg("cond")) == "draft.prob < 0.3 or draft.entropy > 2.5"


def test_extends_positional_defaults_and_inherited_names():
    src = SPECULATIVE + '''
decoder child() extends speculative(2) {
    propose = autoregressive(draft, max = 3)
    sampler = temperature(temperature)
}'''
    d = error(src)  # the base's parameters are not the child's
    assert d.message == "expected a float, found a sampler 'temperature'" and where(d) == "13:27"
    spec = load(src.replace("temperature(temperature)", "top_k(2)"))
    assert spec.slot("propose").arg("model").arg("name") == "draft"
    assert spec.slot("propose").arg("max") == 3


def test_child_bindings_override_what_base_bindings_use():
    src = SPECULATIVE + 'decoder small() extends speculative { draft = model("small") }'
    spec = load(src)
    assert spec.slot("propose").arg("model").arg("name") == "small"
    assert spec.params == () and names(spec.slot("sampler")) == ["temperature(t=0.8)", "top_p(p=0.95)"]


@pytest.mark.parametrize("base_call, message, at", [
    ("speculative(kk = 1)", "decoder 'speculative' has no parameter 'kk'", "11:37"),
    ("speculative(1, 2, 3)", "too many arguments: decoder 'speculative' takes 2 arguments", "11:43"),
    ("speculative(k = 1, k = 2)", "argument 'k' given twice", "11:44"),
    ("speculative(k = 'a')", "expected an int, found a string ('a')", "11:41"),
    ("speculative(k = j)", "unknown name 'j'", "11:41"),
    ("speculativ(1)", "unknown decoder 'speculativ'", "11:25"),
])
def test_bad_extends(base_call, message, at):
    src = SPECULATIVE + f"\ndecoder child() extends {base_call} {{}}"
    d = error(src)
    assert d.message == message and where(d) == at


def test_extends_missing_required_argument_and_cycle():
    src = 'decoder base(k: int) { target = model("t") }\ndecoder child() extends base() {}'
    d = error(src)
    assert d.message == "missing argument 'k' for decoder 'base'" and where(d) == "2:25"
    d = error("decoder a() extends b {}\ndecoder b() extends a {}")
    assert d.message == "extends cycle: b -> a -> b" and where(d) == "1:21"


def test_unknown_base_suggests():
    d = error(SPECULATIVE + "decoder x() extends speculatve {}")
    assert d.hint == "did you mean 'speculative'?"


# --- imports ---------------------------------------------------------------------------------


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_imports_resolve_relative_to_the_importing_file(tmp_path):
    write(tmp_path / "lib" / "speculative.dec", SPECULATIVE)
    write(tmp_path / "lib" / "greedy.dec", '''
        import "speculative.dec"
        decoder greedy_base(k: int = 2) extends speculative(k) { sampler = greedy }
    ''')
    main = write(tmp_path / "specs" / "mine.dec", '''
        import "../lib/greedy.dec"
        decoder mine() extends greedy_base(k = 3) { verify = greedy }
    ''')
    spec = load(main)
    assert spec.name == "mine" and spec.slot("propose").arg("max") == 3
    assert spec.slot("verify").component is lookup("verifier", "greedy")
    assert load(str(main), decoder="speculative").name == "speculative"  # imported decoders are selectable
    assert load(Source(main.read_text(), str(main))).name == "mine"


def test_inline_text_imports_from_cwd(tmp_path, monkeypatch):
    write(tmp_path / "base.dec", SPECULATIVE)
    monkeypatch.chdir(tmp_path)
    assert load('import "base.dec"\ndecoder x() extends speculative {}').slot("propose").arg("max") == 4
    module = parse('import "base.dec"\ndecoder x() extends speculative(k = 2) {}')
    assert check_module(module, base_dir=tmp_path).slot("propose").arg("max") == 2


def test_missing_import(tmp_path):
    main = write(tmp_path / "main.dec", 'import "nope.dec"\ndecoder main() { target = model("t") }')
    d = error(main)
    assert d.message == f"cannot import 'nope.dec': no such file {tmp_path.resolve() / 'nope.dec'}"
    assert where(d) == "1:1" and d.span.end - d.span.start == len('import "nope.dec"')


def test_import_of_a_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    d = error(write(tmp_path / "main.dec", 'import "sub"\ndecoder main() { target = model("t") }'))
    assert d.message == f"cannot import 'sub': {tmp_path.resolve() / 'sub'} is a directory, not a .dec spec"


def test_import_cycle(tmp_path):
    write(tmp_path / "a.dec", 'import "b.dec"\ndecoder a() extends b {}')
    write(tmp_path / "b.dec", 'import "a.dec"\ndecoder b() { target = model("t") }')
    d = error(tmp_path / "a.dec")
    assert d.message == "import cycle: a.dec -> b.dec -> a.dec" and where(d) == "1:1"
    assert d.span.source.name.endswith("b.dec")


def test_errors_inside_imported_files_name_that_file(tmp_path):
    write(tmp_path / "base.dec", "decoder base() { verify rejection }")
    main = write(tmp_path / "main.dec", 'import "base.dec"\ndecoder main() extends base {}')
    d = errors(main)[0]
    assert d.message == "missing '=' in a binding" and d.span.source.name == str(tmp_path / "base.dec")


def test_same_decoder_from_two_imports(tmp_path):
    write(tmp_path / "x.dec", 'decoder base() { target = model("x") }')
    write(tmp_path / "y.dec", 'decoder base() { target = model("y") }')
    d = error(write(tmp_path / "main.dec", 'import "x.dec"\nimport "y.dec"\ndecoder main() extends base {}'))
    assert d.message.startswith("decoder 'base' is defined in both") and where(d) == "2:1"


@pytest.mark.parametrize("path", ["does/not/exist.dec", "a\0b.dec", "."])
def test_unreadable_paths(path):
    (d,) = errors(path)
    assert d.message.startswith("cannot read spec file")


# --- decoder selection -----------------------------------------------------------------------


def test_selection(tmp_path):
    two = 'decoder first() { target = model("a") }\ndecoder second() { target = model("b") }\n'
    assert load(two).name == "second"
    assert load(two, decoder="first").name == "first"
    assert load(write(tmp_path / "first.dec", two)).name == "first"
    d = error(two, decoder="frist")
    assert d.message == "no decoder named 'frist' in <spec>" and d.hint == "did you mean 'first'?"


def test_last_decoder_is_from_the_file_itself(tmp_path):
    write(tmp_path / "base.dec", SPECULATIVE)
    main = write(tmp_path / "main.dec", 'decoder mine() { target = model("t") }\nimport "base.dec"\n')
    assert load(main).name == "mine"


def test_no_decoder():
    d = error("# just a comment\n")
    assert d.message == "no decoder in <spec>" and where(d) == "1:1"


# --- diagnostics -----------------------------------------------------------------------------


def test_rendered_error(tmp_path):
    src = SPECULATIVE.replace("verify  = rejection", "verify  = rejecton").lstrip("\n")
    path = write(tmp_path / "spec.dec", src)
    with pytest.raises(DecError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}:7:15: error: unknown verifier 'rejecton'\n"
        "        verify  = rejecton\n"
        "                  ^^^^^^^^\n"
        "  hint: did you mean 'rejection' or 'multi_rejection'?"
    )


CASES = [
    # (bindings, message, line:col, hint or None)
    (["verfy = rejection"], "unused binding 'verfy'", "3:5", "did you mean 'verify'?"),
    (["helper = top_k(3)"], "unused binding 'helper'", "3:5", "the slots are target"),
    (["sampler = rejection"], "'rejection' is a verifier, but a sampler is expected here", "3:15", None),
    (["sampler = top_q(0.3)"], "unknown sampler 'top_q'", "3:15", "did you mean 'top_p' or 'top_k'?"),
    (["sampler = greedyy"], "unknown sampler 'greedyy'", "3:15", "did you mean 'greedy'?"),
    (["sampler = top_k"], "'top_k' needs arguments: top_k(k: int)", "3:15", "top_k(k = ...)"),
    (["sampler = 3"], "expected a sampler, found a number", "3:15", None),
    (["sampler = 'greedy'"], "expected a sampler, found a string", "3:15", None),
    (["sampler = draft.prob"], "expected a sampler, found a draft statistic", "3:15", None),
    (["sampler = top_p(1.5)"], "top_p's 'p' must be between 0.0 and 1.0, found 1.5", "3:21", None),
    (["sampler = top_k(0)"], "top_k's 'k' must be at least 1, found 0", "3:21", None),
    (["sampler = top_p(q = 0.5)"], "top_p has no parameter 'q'", "3:21", "parameters: p"),
    (["sampler = top_p(p = 0.5, p = 0.6)"], "argument 'p' given twice", "3:30", None),
    (["sampler = top_p(0.5, 0.6)"], "too many arguments: top_p takes 1 argument", "3:26", None),
    (["sampler = top_p()"], "missing argument 'p' for top_p(p: float)", "3:15", None),
    (["sampler = top_p('x')"], "expected a float, found a string ('x')", "3:21", None),
    (["sampler = top_p(true)"], "expected a float, found a bool (true)", "3:21", None),
    (["sampler = top_k(1 / 0)"], "division by zero", "3:25", None),
    (["sampler = top_k(1 + true)"], "'+' needs numbers, found a bool (true)", "3:25", None),
    (["sampler = temperature(t)"], "unknown name 't'", "3:27", None),
    (["sampler = temperature(temp)"], "unknown name 'temp'", "3:27", "did you mean 'temps'?"),
    (["sampler = when draft.prob < 1"], "`when` makes an exit policy and belongs in the `stop` slot; a sampler is expected here", "3:15", None),
    (["propose = autoregressive(target) | greedy", "verify = greedy"], "pipelines `|` combine samplers, but a draft source is expected here", "3:15", None),
    (["propose = autoregressive(greedy)", "verify = greedy"], "'greedy' is a sampler, but a model is expected here", "3:30", None),
    (["propose = autoregressive(model(4))", "verify = greedy"], "expected a string, found an int (4)", "3:36", None),
    (["propose = autoregressive(target, max = 65)", "verify = greedy"], "autoregressive's 'max' must be between 1 and 64, found 65", "3:44", None),
    (["propose = draft(1)", "verify = greedy", "draft = model('d')"], "'draft' is a binding, not a component, and cannot be called", "3:15", None),
    (["verify = target"], "expected a verifier, found 'target', a model", "3:14", None),
    (["sampler = top_k(target)"], "expected an int, found 'target', a model", "3:21", None),
    (["sampler = a", "a = b", "b = a"], "binding 'a' refers to itself (a -> b -> a)", "5:9", None),
    (["sampler = greedy", "sampler = greedy"], "'sampler' is bound twice in decoder 'd'", "4:5", "first bound at <spec>:3:5"),
    (["temps = 3"], "binding 'temps' has the same name as a parameter of 'd'", "3:5", None),
    (["stop = when draft.prob < 0.5"], "'stop' needs a 'propose' slot: it decides when drafting stops", "3:5", None),
    (["verify = rejection"], "'verify' needs a 'propose' slot: there are no drafts to verify", "3:5", None),
    (["propose = autoregressive(target)"], "'propose' needs a 'verify' slot to check the drafts", "3:5", None),
]


@pytest.mark.parametrize("lines, message, at, hint", CASES)
def test_diagnostics(lines, message, at, hint):
    src = decoder(*lines, params="temps: float = 1")
    found = errors(src)
    match = [d for d in found if d.message == message]
    assert match, "\n".join(d.message for d in found)
    assert where(match[0]) == at
    if hint:
        assert hint in match[0].hint


WHEN_CASES = [
    ("draft.prb < 0.3", "unknown draft statistic 'prb'", "5:17", "did you mean 'prob'"),
    ("target.prob < 0.3", "conditions read statistics of the draft, not of 'target'", "5:17", None),
    ("draft.prob", "'draft.prob' is a draft statistic, not a condition", "5:17", "draft.prob < 0.3"),
    ("draft.prob < draft.entropy", "'<' compares a draft statistic with a number, found two statistics", "5:17", None),
    ("draft.prob * 2 < 1", "'*' cannot apply to draft statistics; compare them with numbers instead", "5:17", None),
    ("draft.prob < 'a'", "'<' compares a draft statistic with a number, found a string ('a')", "5:30", None),
    ("draft.prob < 0.3 and 2", "'and' needs conditions, found an int (2)", "5:38", None),
    ("0.5", "expected a condition, found a float (0.5)", "5:17", None),
    ("-draft.prob < 1", "'-' cannot apply to a draft statistic", "5:18", None),
    ("greedy", "expected a number or a draft statistic, found a sampler 'greedy'", "5:17", None),
]


@pytest.mark.parametrize("cond, message, at, hint", WHEN_CASES)
def test_condition_diagnostics(cond, message, at, hint):
    d = error(decoder("propose = autoregressive(target)", "verify = rejection", f"stop = when {cond}"))
    assert (d.message, where(d)) == (message, at)
    if hint:
        assert hint in d.hint


def test_no_target():
    d = error(decoder("sampler = greedy", target=False))
    assert d.message == "decoder 'd' has no target" and where(d) == "1:9"


def test_unused_model_is_a_warning():
    spec = load(decoder("draft = model('draft')"))
    (w,) = spec.warnings
    assert (w.severity, w.message, where(w)) == ("warning", "unused model binding 'draft'", "3:5")


def test_all_errors_are_reported_in_source_order():
    src = decoder("sampler = top_q(1)", "propose = autoregressive(target, max = 0)", "verify = rejecton", "stop = when draft.prb < 1")
    found = errors(src)
    assert [where(d) for d in found] == ["3:15", "4:44", "5:14", "6:17"]
    assert [d.message.split(" '")[0] for d in found] == ["unknown sampler", "autoregressive's", "unknown verifier", "unknown draft statistic"]


def test_parameter_declaration_errors():
    found = errors(decoder(params="k: integer = 4, j: int = 2.5, j: int = 1, b: bool = 1"))
    assert [(d.message, where(d)) for d in found] == [
        ("unknown type 'integer'", "1:14"),
        ("expected an int, found a float (2.5)", "1:36"),
        ("parameter 'j' is declared twice", "1:41"),
        ("expected a bool, found an int (1)", "1:63"),
    ]
    assert found[0].hint == "did you mean 'int'?"


def test_duplicate_decoder():
    d = error('decoder d() { target = model("t") }\ndecoder d() { target = model("u") }')
    assert d.message == "decoder 'd' is defined twice" and where(d) == "2:9"


def test_deep_but_allowed_nesting_checks():
    d = error(decoder("sampler = temperature(" + "-" * 91 + "1)"))
    assert d.message == "temperature's 't' must be between 0.0 and 1000000.0, found -1.0"


def test_integers_are_64_bit():
    d = error(decoder("sampler = top_k(3000000000 * 4000000000)"))
    assert d.message == "integer too large for 64 bits" and where(d) == "3:21"
    d = error(decoder(params="k: int = 1"), overrides={"k": 10**30})
    assert d.message == "override k must be an int, found an int too large for 64 bits"


# --- robustness: any override values or folded arithmetic end as a Spec or a DecError ----------

ROBUST = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                      st.lists(st.integers(), max_size=3), st.sampled_from(["6", "0.5", "true", "1,2", "nan", "-1e9"]))


@ROBUST
@given(st.dictionaries(st.sampled_from(["k", "temperature", "kk", "arms"]), ANY_VALUE, max_size=3))
def test_any_overrides(overrides):
    try:
        spec = load(GREEDY_SPEC.replace("(k: int = 4)", "(k: int = 4, arms: list[int] = [1])"), overrides=overrides)
    except DecError as e:
        assert all(d.span is not None for d in e.diagnostics)
    else:
        assert 1 <= spec.slot("propose").arg("max") <= 64


ARITH = ["9999999999", "0", "1", "0.5", "1e308", "true", "'s'", "k", "+", "-", "*", "/", "(", ")", "<", "and", "not"]


@ROBUST
@given(st.lists(st.sampled_from(ARITH), min_size=1, max_size=12).map(" ".join))
def test_any_arithmetic(expr):
    src = decoder(f"sampler = top_k({expr})", f"stop = when draft.prob < ({expr})", "propose = autoregressive(target)",
                  "verify = rejection", params="k: int = 3")
    try:
        spec = load(src)
    except DecError as e:
        assert all(d.span is not None for d in e.diagnostics)
    else:
        assert isinstance(spec.slot("sampler")[0].arg("k"), int)


@pytest.mark.parametrize("given", ["x" * 5000, "x" * 300 + ".dec", "a\x00b", "/" * 5000])
def test_text_that_is_neither_a_spec_nor_a_readable_path_is_a_diagnostic(given):
    """A string compile cannot take as .dec text is a path or a shipped spec's name: one too long for the OS, or with
    a NUL byte, is a DecError (said briefly), never the OSError or ValueError the file system raises."""
    import decspec

    with pytest.raises(DecError) as info:
        decspec.compile(given)
    assert "x" * 150 not in str(info.value) and "/" * 150 not in str(info.value)  # the input said briefly
