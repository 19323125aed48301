"""Extreme numbers never give silent wrong answers.

- Every float parameter of every component has a finite range, checked at the spec's position whether the
  value is a literal, an API override or a command-line override; inf, nan, overflowing and underflowing
  literals and arithmetic are refused where they are written; `when` thresholds lie in their statistic's range.
- Over the whole allowed range the sampler math is stable: no NaN, removed tokens stay removed, a sample is
  always a kept token; a tiny temperature is greedy, the largest one uniform over the kept support.
- A grammar plus any allowed sampling parameters decodes without a grammar violation, on every backend.
- Beam search ranks finished hypotheses correctly over the whole length_penalty range.
"""
from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.backends.eager.rules import sample_tokens
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib import registry
from decspec.stdlib.registry import Component, Contract, Param
from decspec.stdlib.samplers import HEADROOM, T_MAX, apply_pipeline, greedy, temperature
from decspec.stdlib.models.table import TableModel

FLOAT_TYPES = ("float", "list[float]")
TINY = [5e-324, 1e-320, 1e-300, 1e-45, 1e-40, 1e-38, 1e-30, 1e-12, 1e-6]  # subnormal in float64 and float32, normal


def float_params():
    return [(c, p) for c in registry.components() for p in c.params if p.type in FLOAT_TYPES]


# --------------------------------------------------------------------------- every float parameter has a finite range


def test_every_float_parameter_has_a_finite_range_holding_its_default():
    assert float_params()
    for comp, p in float_params():
        assert math.isfinite(p.low) and math.isfinite(p.high) and p.low <= p.high, (comp.name, p.name)
        if not p.required:
            assert all(p.low <= x <= p.high for x in (p.default if isinstance(p.default, tuple) else (p.default,))), (comp.name, p.name)


def test_every_draft_statistic_has_a_finite_range():
    stats = registry.components("stat")
    assert stats and all(s.values and all(map(math.isfinite, s.values)) for s in stats)


def test_a_component_with_an_unbounded_float_parameter_is_refused():
    with pytest.raises(ValueError, match="needs finite bounds"):
        registry.register(Component("sampler", "unbounded", (Param("x", "float", low=0.0),), "", Contract(None, "")))
    with pytest.raises(ValueError, match="finite range"):
        registry.register(Component("stat", "unbounded", (), "", Contract(None, "")))
    assert registry.lookup("sampler", "unbounded") is None and registry.lookup("stat", "unbounded") is None


# A spec around one component, its argument `x` coming from a decoder parameter `x`.
TEMPLATES = {
    "sampler": 'target = model("target")\n    sampler = {call}',
    "exit": 'target = model("target")\n    draft = model("draft")\n    propose = autoregressive(draft, max = 8)\n'
            '    stop = {call}\n    verify = rejection',
    "verifier": 'target = model("target")\n    draft = model("draft")\n    propose = autoregressive(draft)\n    verify = {call}',
    "search": 'target = model("target")\n    search = {call}',
    "draft": 'target = model("target")\n    draft = model("draft")\n    propose = {call}\n    verify = multi_rejection',
    "model": 'target = {call}',  # a combined model (contrastive, dola) as the target
    "unmask": 'target = model("target")\n    denoise = blocks(length = 4, unmask = {call})',  # a diffusion decoder's rule
}
MODEL_ARGS = {"model": 'model("target")', "list[int]": "[1]"}  # a model expression's other required arguments


def listed(p) -> bool:
    return p.type.startswith("list[")


def around(comp, p, value: str = "x") -> str:
    """A list[float] parameter takes a one-element list, `x` or [literal]; a draft source its model first."""
    model = "draft, " if comp.param("model") is not None and comp.param("model").required else ""
    if comp.kind == "model":  # a model expression: its models and layers given by name
        model = "".join(f"{q.name} = {MODEL_ARGS[q.type]}, " for q in comp.params if q.required and q is not p)
    call = f"{comp.name}({model}{p.name} = {value if value == 'x' or not listed(p) else f'[{value}]'})"
    default = p.default if not p.required else p.low
    decl = f"x: list[float] = {list(default)}" if listed(p) else f"x: float = {default}"
    return f"decoder d({decl}) {{\n    " + TEMPLATES[comp.kind].format(call=call) + "\n}\n"


def given_as(p, value):
    """An API override of `x`: the value, or a one-element list for a list parameter (the command line's text
    for one is the same number)."""
    return [value] if listed(p) and not isinstance(value, str) else value


def test_every_float_parameter_can_be_tried_here():
    assert {c.kind for c, _ in float_params()} <= set(TEMPLATES)


def outside(p) -> list[float]:
    width = p.high - p.low
    return [p.low - max(1e-3 * width, 1e-9), p.high + max(1e-3 * width, 1e-9), p.high * 2 + 1, -1e300, 1e300]


@pytest.mark.parametrize("comp, p", float_params(), ids=lambda x: getattr(x, "name", ""))
def test_a_float_parameter_is_checked_at_the_spec_position(comp, p):
    """In range (the ends included) it loads; outside, as a literal or an override from the API or the command
    line, it is refused at the argument; inf and nan overrides are refused at the parameter's declaration."""
    for value in (p.low, p.high, (p.low + p.high) / 2):
        spec = load(around(comp, p), overrides={"x": given_as(p, value)})
        instances = [i for _, v in spec.slots for i in (v if isinstance(v, tuple) else (v,))]
        instances += [a for i in instances for _, a in getattr(i, "args", ()) if hasattr(a, "component")]  # blocks(unmask = ...)
        got = next(i for i in instances if getattr(i, "component", None) is comp).arg(p.name)
        assert got == ((value,) if listed(p) else value)
    text = around(comp, p)
    at = text.index(f"{p.name} = x", text.index(f"{comp.name}(")) + len(f"{p.name} = ")  # the argument `x`
    for value in outside(p):
        for overrides in ({"x": given_as(p, value)}, {"x": repr(value)}):  # API, command line
            with pytest.raises(DecError, match=f"'{p.name}' must be between") as info:
                load(text, overrides=overrides)
            d = info.value.diagnostics[0]
            assert d.span.start == at and "parameter 'x'" in d.hint
        literal = around(comp, p, repr(value))
        with pytest.raises(DecError, match=f"'{p.name}' must be between") as info:
            load(literal)
        assert info.value.diagnostics[0].span.start == literal.index(f"{p.name} = ", literal.index(f"{comp.name}(")) + len(f"{p.name} = ")
    for bad in (math.inf, -math.inf, math.nan, "inf", "nan", "-inf", "1e400"):
        with pytest.raises(DecError, match="non-finite float") as info:
            load(text, overrides={"x": given_as(p, bad)})
        assert info.value.diagnostics[0].span.start == text.index("x: ")


SAMPLER = 'decoder d() {{\n    target = model("target")\n    sampler = {}\n}}\n'


@pytest.mark.parametrize("expr, message", [
    ("temperature(1e400)", "too large for a 64-bit float"),
    ("temperature(1E309)", "too large for a 64-bit float"),
    ("temperature(1e-400)", "too small for a 64-bit float"),
    ("temperature(0.00000e-999)", None),  # 0 written as 0 is 0
    ("temperature(4.9e-324)", None),  # the smallest subnormal is a float
    ("temperature(1e200 * 1e200)", "'\\*' overflows a 64-bit float"),
    ("temperature(1e300 / 1e-300)", "'/' overflows a 64-bit float"),
    ("temperature(1e-200 * 1e-200)", "'\\*' underflows a 64-bit float"),
    ("temperature(1 / 1e308 / 1e308)", "'/' underflows a 64-bit float"),
    ("top_p(1e308 + 1e308 - 1e308)", "'\\+' overflows"),
])
def test_literals_and_arithmetic_stay_finite(expr, message):
    """Refused at the literal, or at the whole arithmetic expression (the argument)."""
    text = SAMPLER.format(expr)
    if message is None:
        load(text)
        return
    with pytest.raises(DecError, match=message) as info:
        load(text)
    d = info.value.diagnostics[0]
    assert d.span.start == text.index(expr) + expr.index("(") + 1


STOP = ('decoder d(thr: float = 0.5) {{\n    target = model("target")\n    draft = model("draft")\n'
        '    propose = autoregressive(draft, max = 4)\n    stop = {}\n    verify = rejection\n}}\n')


@pytest.mark.parametrize("stop, bad", [
    ("when draft.prob < 1.5", "1.5"), ("when draft.prob < -0.1", "-0.1"), ("when 2 > draft.cumprob", "2"),
    ("when draft.entropy > 40", "40"), ("when draft.entropy > -1", "-1"),
    ("when draft.prob < 0.3 or draft.entropy > 1e9", "1e9"),
    ("heuristic(until = draft.prob < 7)", "7"), ("bandit(until = draft.cumprob <= -3)", "-3"),
])
def test_thresholds_lie_in_their_statistic_range(stop, bad):
    text = STOP.format(stop)
    with pytest.raises(DecError, match="is outside it") as info:
        load(text)
    assert info.value.diagnostics[0].span.start == text.index(bad, text.index("stop"))


@pytest.mark.parametrize("stop", ["when draft.prob < 1", "when draft.prob <= 0", "when draft.entropy > 32",
                                  "when draft.cumprob < thr", "heuristic(until = draft.prob < 0.4)"])
def test_thresholds_in_range_load(stop):
    load(STOP.format(stop))


@pytest.mark.parametrize("override", [2.0, "2", -0.5])
def test_a_threshold_from_an_override_is_checked_where_it_is_compared(override):
    text = STOP.format("when draft.prob < thr")
    with pytest.raises(DecError, match="is outside it") as info:
        load(text, overrides={"thr": override})
    d = info.value.diagnostics[0]
    assert d.span.start == text.index("thr", text.index("stop")) and "'thr'" in d.hint
    with pytest.raises(DecError, match="non-finite"):
        load(text, overrides={"thr": math.nan})


@pytest.mark.parametrize("override, message", [("temperature=inf", "non-finite float"), ("temperature=nan", "non-finite float"),
                                               ("temperature=1e400", "non-finite float"), ("temperature=2e6", "'t' must be between"),
                                               ("top_p=-1e-300", "'p' must be between")])
def test_the_command_line_refuses_extreme_overrides(override, message, capsys):
    from decspec.cli import main

    assert main(["check", "specs/speculative.dec", override]) == 1
    err = capsys.readouterr().err
    assert message in err and "specs/speculative.dec:" in err


def test_the_api_passes_overrides_through_the_same_check():
    with pytest.raises(DecError, match="non-finite"):
        decspec.compile("specs/speculative.dec", temperature=math.inf)
    with pytest.raises(DecError, match="'t' must be between"):
        decspec.compile("specs/speculative.dec", temperature=1e7)


# --------------------------------------------------------------------------- sampler math over the allowed range


def allowed(p) -> st.SearchStrategy[float]:
    """Values over the whole range, with its ends and the tiny positives (underflow in float32 / float64)."""
    special = [v for v in (p.low, p.high, *TINY, *(p.high * (1 - 1e-9), p.low + 1e-9)) if p.low <= v <= p.high]
    return st.one_of(st.sampled_from(special), st.floats(p.low, p.high, allow_nan=False))


def stage_strategy(name: str) -> st.SearchStrategy[tuple]:
    comp = registry.lookup("sampler", name)
    params = []
    for p in comp.params:
        if p.type == "int":
            params.append(st.tuples(st.just(p.name), st.integers(1, 20)))
        else:
            params.append(st.tuples(st.just(p.name), allowed(p)))
    return st.tuples(st.just(name), st.tuples(*params))


STAGES = st.one_of(*(stage_strategy(c.name) for c in registry.components("sampler")))
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@st.composite
def logit_rows(draw, low: float = -100.0, high: float = 100.0):
    """[R, V] logits with some removed tokens (-inf; at least one kept per row), and counts [R, V] for the penalties."""
    R, V = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    values = draw(st.lists(st.lists(st.floats(low, high, allow_nan=False, width=32), min_size=V, max_size=V), min_size=R, max_size=R))
    masked = draw(st.lists(st.lists(st.booleans(), min_size=V, max_size=V), min_size=R, max_size=R))
    logits = torch.tensor(values, dtype=torch.float64)
    mask = torch.tensor(masked)
    mask[torch.arange(R), torch.tensor(draw(st.lists(st.integers(0, V - 1), min_size=R, max_size=R)))] = False
    counts = torch.tensor(draw(st.lists(st.lists(st.integers(0, 5), min_size=V, max_size=V), min_size=R, max_size=R)))
    return logits.masked_fill(mask, -math.inf), counts


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """As the backends' softmax: in at least float32."""
    return torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)


def assert_a_distribution_over_the_kept_tokens(logits: torch.Tensor, out: torch.Tensor):
    assert not out.isnan().any(), out
    assert not (out == math.inf).any(), out
    assert (out[logits == -math.inf] == -math.inf).all()  # removed tokens stay removed
    assert out.isfinite().any(-1).all()  # some token is left in every row
    probs = softmax(out)
    assert not probs.isnan().any() and torch.allclose(probs.sum(-1).double(), torch.ones(probs.shape[0], dtype=torch.float64))
    for u in (0.0, 0.5, 1 - 2**-24):
        tokens = sample_tokens(probs, torch.full(probs.shape[:1], u, dtype=probs.dtype))
        assert out.gather(-1, tokens[:, None]).isfinite().all()


@settings(max_examples=400)
@given(rows=logit_rows(), stages=st.lists(STAGES, min_size=1, max_size=4), dtype=st.sampled_from(DTYPES))
def test_any_allowed_pipeline_keeps_a_distribution_over_the_kept_tokens(rows, stages, dtype):
    logits, counts = rows
    logits = logits.to(dtype)
    out = apply_pipeline(logits, tuple(stages), counts)
    assert out.dtype in (dtype, torch.promote_types(dtype, torch.float32))
    assert_a_distribution_over_the_kept_tokens(logits, out)


@settings(max_examples=300)
@given(rows=logit_rows(), t=st.one_of(st.sampled_from(TINY), st.floats(0.0, 1e-6, exclude_min=True)),
       dtype=st.sampled_from(DTYPES))
def test_a_tiny_temperature_is_greedy(rows, t, dtype):
    """softmax(logits / t) for tiny t is one-hot on the most likely token (uniform over exact ties, which greedy
    breaks by index): logits on a 1/8 grid, so that every gap is a tie or at least 1/8."""
    logits = (rows[0] * 8).round().div(8).to(dtype)
    out = temperature(logits, t)
    assert_a_distribution_over_the_kept_tokens(logits, out)
    probs = softmax(out).double()
    ties = logits == logits.amax(-1, keepdim=True)
    assert (probs[~ties] == 0).all()
    assert torch.allclose(probs, (ties / ties.sum(-1, keepdim=True)).double(), rtol=1e-6, atol=0)
    tie_free = ties.sum(-1) == 1
    assert torch.equal(probs[tie_free], softmax(greedy(logits)).double()[tie_free])


@settings(max_examples=200)
@given(rows=logit_rows(), dtype=st.sampled_from(DTYPES))
def test_the_largest_temperature_is_uniform_over_the_kept_tokens(rows, dtype):
    logits = rows[0].to(dtype)
    probs = softmax(temperature(logits, T_MAX)).double()
    kept = logits.isfinite()
    uniform = (kept / kept.sum(-1, keepdim=True)).double()
    assert torch.allclose(probs, uniform, rtol=1e-3, atol=0)


def test_temperature_divides_where_the_result_is_representable():
    """Bit for bit logits / t while |logits / t| stays below finfo.max / HEADROOM; past it the row takes the
    smallest t it can (its largest |logit| at the limit), signs and order kept, so that a later
    repetition_penalty still means what it means for logits / t."""
    logits = torch.tensor([[1.5, -2.0, -math.inf, 3.0], [1.0, 0.9, -math.inf, -1e30]])
    out = temperature(logits, 1e-10)
    assert torch.equal(out[0], logits[0] / 1e-10)
    limit = torch.finfo(torch.float32).max / HEADROOM
    assert out[1, 3] == -limit and out[1, 0] > out[1, 1] > 0 and out[1, 2] == -math.inf
    penalized = apply_pipeline(logits, (("temperature", (("t", 1e-40),)), ("repetition_penalty", (("r", 2.0),))),
                               torch.tensor([[0, 0, 0, 0], [1, 0, 0, 1]]))
    assert softmax(penalized)[1].tolist() == [0.0, 1.0, 0.0, 0.0]  # rep(1.0) = 0.5 < 0.9: as for any small t
    assert temperature(torch.tensor([[10.0, 9.0]], dtype=torch.float16), 1e-4).dtype == torch.float32


# --------------------------------------------------------------------------- grammar + sampling, every backend

VOCAB = [b"a", b"b", b"c", b"{", b"}", b"ab", b"ba", b"cc", None]
EOS = len(VOCAB) - 1
LANGUAGE = r"(ab|c)+b?"


def stage_text(stage) -> str:
    name, params = stage
    return f"{name}({', '.join(f'{k} = {v!r}' for k, v in params)})"


def grammar_spec(stages, propose: bool) -> str:
    lines = ['target = model("target")', f"sampler = {' | '.join(map(stage_text, stages))}", f'grammar = regex("""{LANGUAGE}""")']
    if propose:
        lines[1:1] = ['draft = model("draft")']
        lines += ["propose = autoregressive(draft, max = 3)", "verify = rejection"]
    return "decoder d() {\n    " + "\n    ".join(lines) + "\n}\n"


MODELS = {"target": TableModel.random(len(VOCAB), 1, 7, eos_token_id=EOS),
          "draft": TableModel.random(len(VOCAB), 1, 8, temperature=3.0, eos_token_id=EOS)}


@pytest.mark.parametrize("backend, examples", [("eager", 60), ("exact", 25), ("inductor", 20)])
def test_a_grammar_with_any_allowed_sampling_never_breaks(backend, examples):
    @settings(max_examples=examples, deadline=None)
    @given(stages=st.lists(STAGES, min_size=1, max_size=3), propose=st.booleans(), seed=st.integers(0, 2**32))
    def check(stages, propose, seed):
        dec = decspec.compile(grammar_spec(stages, propose), models=MODELS, vocab=VOCAB, backend=backend)
        for row in dec.generate([[1], [3, 4]], max_new_tokens=8, seed=seed).tokens:
            ended = bool(row) and row[-1] == EOS
            text = b"".join(VOCAB[t] for t in (row[:-1] if ended else row)).decode()
            assert EOS not in row[:-1]
            if ended:
                assert re.fullmatch(LANGUAGE, text), text
            else:
                assert re.fullmatch(r"(ab|c)*a?|(ab|c)+b?", text), text  # a prefix of the language

    check()


# --------------------------------------------------------------------------- beam search over the length_penalty range


@pytest.mark.parametrize("penalty", [-10.0, -3.0, 0.0, 3.0, 10.0])
def test_beam_ranks_every_hypothesis_over_the_length_penalty_range(penalty):
    """Exhaustive (the beam holds every prefix): each finished hypothesis with log p / length ** penalty, best first,
    even where that is -1e5 or 1e-6 times the raw score."""
    V, G, eos, prompt = 3, 3, 2, [1]
    model = TableModel.random(V, 1, seed=3, eos_token_id=eos)
    text = f'decoder d() {{ target = model("target")\n search = beam(width = {V ** G}, length_penalty = {penalty}, early_stopping = "never") }}'
    out = decspec.compile(text, target=model).generate([prompt], max_new_tokens=G)

    def score(seq):
        return sum(math.log(float(model.probs(prompt + seq[:i])[t])) for i, t in enumerate(seq)) / len(seq) ** penalty

    every = [list(s) for n in range(1, G + 1) for s in itertools.product(range(V), repeat=n)
             if eos not in s[:-1] and (n == G or s[-1] == eos)]
    assert sorted(out.beams[0]) == sorted(every)
    assert out.scores[0] == pytest.approx([score(b) for b in out.beams[0]], rel=1e-5)
    assert all(a >= b for a, b in zip(out.scores[0], out.scores[0][1:]))


@pytest.mark.parametrize("penalty", [-10.0, 10.0])
def test_long_hypotheses_at_the_ends_of_the_length_penalty_range(penalty):
    """30 tokens: 30 ** 10 overflows nothing in float64, and scores far below -1e9 still fill the finished slots."""
    model = TableModel.random(6, 1, 0)
    text = f'decoder d() {{ target = model("target")\n search = beam(width = 3, length_penalty = {penalty}) }}'
    out = decspec.compile(text, target=model).generate([[1]], max_new_tokens=30, eos_token_id=None)
    assert len(out.beams[0]) == 3 and all(len(b) == 30 for b in out.beams[0])
    assert all(math.isfinite(s) for s in out.scores[0]) and out.scores[0] == sorted(out.scores[0], reverse=True)
