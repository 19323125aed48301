"""The mlir backend: every spec exports to each dialect torch-mlir lowers it to, the text re-parses
with torch-mlir's own parser, and unsupported ops fail naming the op and the .dec line."""
from __future__ import annotations

import functools
import glob
import math
import os
import subprocess

import pytest
import torch

pytest.importorskip("torch_mlir.extras.fx_importer", reason="torch-mlir is an optional extra: pip install 'decspec[mlir]'")

import torch_mlir  # noqa: E402
from torch_mlir import ir  # noqa: E402
from torch_mlir.dialects import torch as torch_d  # noqa: E402

import decspec  # noqa: E402
from decspec.backends.mlir import DIALECTS, export_mlir, lower, trace  # noqa: E402
from decspec.backends.mlir.export import HOST_OPS, ROUND_INPUTS  # noqa: E402
from decspec.backends.mlir.round import RoundModule, VerifyModule, verified_ops  # noqa: E402
from decspec.dsl.diagnostics import DecError  # noqa: E402
from decspec.stdlib.models.default import random_models  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_SPECS = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(ROOT, "specs", "*.dec"))
                   if decspec.compile(p).graph is not None)  # beam search has no round graph to export (tests/test_beam_search.py)


def _host_op(spec: str):
    """The first op of the spec's round that runs on the host (grammar automata), or None."""
    graph = decspec.compile(os.path.join(ROOT, "specs", f"{spec}.dec")).graph
    return next((op for op in graph.walk() if op.name in HOST_OPS), None)


SPECS = [s for s in ALL_SPECS if _host_op(s) is None]


def _context_op(spec: str):
    """The first op after the proposal that reads the context, which the verify part does not take (docs/backends.md):
    a penalty sampler on the target, or a grammar's state at the verified positions. None when there is none."""
    graph = decspec.compile(os.path.join(ROOT, "specs", f"{spec}.dec")).graph
    return next((op for op in graph.ops if (op.name in ("logits_transform", "sampler_probs") and len(op.inputs) > 1)
                 or op.name == "grammar_state"), None)


def _reads_context_after_proposal(spec: str) -> bool:
    return _context_op(spec) is not None


def _round_input(spec: str) -> bool:
    """Whether the round reads what the host chooses or carries between rounds (length caps, draft arms, draft states,
    kept hidden states): inputs of the whole round only (test_round_inputs_* below)."""
    graph = decspec.compile(os.path.join(ROOT, "specs", f"{spec}.dec")).graph
    return any(op.name in ROUND_INPUTS for op in graph.walk())


CONTEXT_SPECS = [s for s in SPECS if _reads_context_after_proposal(s)]
VERIFY_SPECS = [s for s in SPECS if s not in CONTEXT_SPECS and not _round_input(s)]
ROUND_SPECS = [s for s in SPECS if not _round_input(s)]  # the others: test_round_inputs_* (their models need heads)
HOST_SPECS = [s for s in ALL_SPECS if _host_op(s) is not None]

# What torch-mlir lowers, measured (docs/backends.md, "mlir"): every part of every spec reaches the
# torch and linalg-on-tensors dialects; stablehlo and tosa miss ops the sampler and verifiers use.
SUPPORTED = ("torch", "linalg")
UNSUPPORTED = {  # dialect -> the torch-mlir op its lowering lacks, for the speculative verify part
    "stablehlo": "torch.constant.int",  # a scalar constant: torch-mlir's error carries no location to map back
    "tosa": "torch.aten.sort",
}


LETTERS = [None if i == 3 else bytes([i]) if i < 256 else bytes([97 + i % 26]) * 2 for i in range(512)]  # 3: EOS


@functools.lru_cache(maxsize=None)
def traced(spec: str, part: str):
    path = os.path.join(ROOT, "specs", f"{spec}.dec")
    models = random_models(0)
    if decspec.compile(path).spec.slot("grammar") is None:
        return trace(path, part, models=models, capacity=64)
    for m in models.values():  # a grammar binds over the target's vocabulary as bytes, and needs an EOS
        m.eos_token_id = 3
    return trace(decspec.compile(path, models=models, vocab=LETTERS), part, capacity=64)


def reparse(text: str) -> str:
    """Parse with torch-mlir's Python bindings (torch dialect registered) and print again."""
    context = ir.Context()
    torch_d.register_dialect(context)
    with context:
        module = ir.Module.parse(text)
        assert module.operation.verify()
        return str(module)


def opt_parses(text: str, tmp_path) -> None:
    """torch-mlir-opt (shipped in the wheel, every torch-mlir dialect registered, tm_tensor included) reads and verifies it."""
    tool = os.path.join(list(torch_mlir.__path__)[0], "_mlir_libs", "torch-mlir-opt")
    path = tmp_path / "module.mlir"
    path.write_text(text)
    done = subprocess.run([tool, str(path), "-o", os.devnull], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("dialect", SUPPORTED)
@pytest.mark.parametrize("spec", VERIFY_SPECS)
def test_verify_part_exports_and_reparses(spec, dialect, tmp_path):
    export = lower(traced(spec, "verify"), dialect)
    assert "func.func @verify" in export.text
    assert export.output_names == ["tokens", "accepted", "drafted"]
    if dialect == "torch":
        assert reparse(export.text) == export.text  # the bindings' parser reads back exactly what was printed
    opt_parses(export.text, tmp_path)


@pytest.mark.parametrize("dialect", SUPPORTED)
@pytest.mark.parametrize("spec", ROUND_SPECS)
def test_round_exports_with_static_caches(spec, dialect, tmp_path):
    export = lower(traced(spec, "round"), dialect)
    assert "func.func @round" in export.text
    # the caches are explicit: each one's state comes in and goes out
    signature = export.text.split("func.func @round(", 1)[1].split(") ->", 1)[0]
    assert signature.count("%arg") == len(export.input_names)  # weights and buffers are constants, not arguments
    caches = [n for n in export.input_names if "." in n and not n.startswith("grammar.")]  # a grammar's start: in only
    assert caches and export.output_names[3:] == caches
    if dialect == "torch":
        assert "!torch.vtensor<[1,64],si64>" in export.text  # the context buffer: static [B, S]
        reparse(export.text)
    opt_parses(export.text, tmp_path)


def test_round_module_is_the_generated_round():
    """The exported module runs the inductor code generator's round: same tokens as calling it directly."""
    models = random_models(0)
    dec = decspec.compile(os.path.join(ROOT, "specs", "speculative_greedy.dec"), models=models)
    module = RoundModule(dec.graph, models, batch=1, capacity=64)
    args = module.example_inputs(seed=1)
    before = [a.clone() for a in args]
    tokens, accepted, drafted, *cache = module(*args)
    assert all(torch.equal(a, b) for a, b in zip(args, before))  # pure: the inputs are not written
    again = module(*args)
    assert torch.equal(again[0], tokens) and torch.equal(again[1], accepted)
    assert 0 <= int(accepted) <= int(drafted) <= 5 and tokens.shape == (1, 6)
    assert any(not torch.equal(a, b) for a, b in zip(cache, args[3:]))  # the round wrote the caches


def letter_grammar_round(text: str):
    """A grammar spec's round module (batch 2, capacity 64) on random models whose tokens repeat one letter 1-3 times
    (id 3: the EOS) -> (the grammar's matcher, the module)."""
    models = random_models(2)
    for m in models.values():
        m.eos_token_id = 3
    vocab = [bytes([97 + i % 26]) * (1 + i % 3) for i in range(512)]
    vocab[3] = None
    dec = decspec.compile(text, models=models, vocab=vocab)
    grammars = dec._bound_grammars()
    return grammars["grammar"], RoundModule(dec.graph, models, batch=2, capacity=64, grammars=grammars)


def test_a_grammar_round_exports_its_tables_and_keeps_to_the_grammar():
    """A regular grammar's round exports with its tables as constants and the state after the committed tokens as an
    input (`grammar.grammar.start`); what the exported function commits is a walk the grammar allows, from there."""
    text = 'decoder g(k: int = 3) {\n target = model("target")\n draft = model("draft")\n sampler = temperature(1.0)\n' \
           ' propose = autoregressive(draft, max = k)\n verify = rejection\n grammar = regex("""(abc|d)+e{0,3}""")\n}'
    matcher, module = letter_grammar_round(text)
    assert module.input_names()[-1] == "grammar.grammar.start"
    for seed in range(4):
        tokens, accepted, drafted, *_ = module(*module.example_inputs(seed=seed))
        for row, n in zip(tokens.tolist(), accepted.tolist()):
            state = matcher.start
            for t in row[: n + 1]:
                state = int(matcher.next_state([state], [t])[0])
                assert state >= 0, (seed, row)


def _round_module(spec: str, capacity: int = 64):
    from benchmarks.backend_matrix import tiny_models  # random_models with Medusa, Hydra and EAGLE heads on the target

    models = tiny_models(0)
    dec = decspec.compile(os.path.join(ROOT, "specs", f"{spec}.dec"), models=models)
    return RoundModule(dec.graph, dec._bound_models(), batch=2, capacity=capacity)


def _named(module, values, names=None):
    return dict(zip(names or module.input_names(), values))


def test_round_inputs_a_length_cap_caps_the_draft():
    """bandit: the cross-round policy's cap is an input [B]; the round drafts no further than it."""
    module = _round_module("bandit")
    key, = module.caps
    args = list(module.example_inputs(seed=3))
    at = module.input_names().index(key)
    for cap in (1, 2, 8):
        args[at] = torch.tensor([cap, 1])
        tokens, accepted, drafted, *_ = module(*args)
        assert int(drafted[0]) <= cap and int(drafted[1]) <= 1
    args[at] = torch.tensor([8, 8])
    assert int(module(*args)[2].max()) > 2  # with room the random draft goes on (no exit policy stops it early here)


def test_round_inputs_a_draft_arm_picks_each_rows_view():
    """dynamic_exit: the per-row view is an input [B]. With the caches prefilled, row 1's drafts change with its view,
    and its deepest view (exit 4 of the 4-layer target: the target itself) has every greedy draft accepted; row 0,
    whose view stays 0, commits the same tokens throughout."""
    module = _round_module("dynamic_exit")
    ctx = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(1))
    length = torch.tensor([16, 16])
    for role in module.roles:
        module.sessions[role].prefill(ctx, length)
    args = list(module.example_inputs(seed=1))
    args[0], args[1] = ctx, length
    key, = module.caps
    at = module.input_names().index(key)
    results = []
    for arm in range(3):
        args[at] = torch.tensor([0, arm])
        tokens, accepted, drafted, *_ = module(*args)
        results.append((tokens.tolist(), accepted.tolist()))
    assert results[0][0][0] == results[1][0][0] == results[2][0][0]
    assert len({str(r[0][1]) for r in results}) == 3
    assert results[2][1][1] == 4 and results[0][1][1] < 4


def test_round_inputs_a_draft_state_goes_in_and_its_update_comes_out():
    """token_recycling: the adjacency matrix is an input and the round's update of it an output, so a host carries it."""
    module = _round_module("token_recycling")
    name, = module.draft_state_names()
    names, outs = module.input_names(), module.output_names()
    args = list(module.example_inputs(seed=2))
    result = module(*args)
    old, new = args[names.index(name)], result[outs.index(name)]
    assert old.shape == new.shape and not torch.equal(old, new)  # the round stored the target's top tokens
    assert int(result[2].max()) == 0  # an empty matrix proposes nothing
    args[names.index(name)] = new  # carried into the next round: the matrix now proposes drafts
    assert int(module(*args)[2].max()) > 0


def test_round_inputs_kept_hidden_states_go_in_and_come_out():
    """medusa: the target's kept hidden states are an input and an output: the heads read them, the verification writes them."""
    module = _round_module("medusa")
    names, outs = module.input_names(), module.output_names()
    args = list(module.example_inputs(seed=4))
    h = names.index("target.hiddens")
    result = module(*args)
    new = result[outs.index("target.hiddens")]
    assert new.shape == args[h].shape and new.abs().sum() > 0  # the round's forwards wrote hidden states
    base = module(*args)[0]
    args[h] = torch.randn(args[h].shape, generator=torch.Generator().manual_seed(0)) * 10
    assert not torch.equal(module(*args)[0], base)  # the heads draft from the hidden states that came in


@pytest.mark.parametrize("spec", ["bandit", "medusa", "token_recycling"])
def test_round_inputs_export_to_torch(spec):
    module = _round_module(spec, capacity=64)
    from decspec.backends.mlir.export import Traced, decompositions

    args = module.example_inputs()
    with torch.no_grad():
        program = torch.export.export(module, args, strict=False).run_decompositions(decompositions())
    export = lower(Traced(module, program, args, 0.0), "torch")
    signature = export.text.split("func.func @round(", 1)[1].split(") ->", 1)[0]
    assert signature.count("%arg") == len(export.input_names)
    carried = {"bandit": [], "medusa": ["target.hiddens"], "token_recycling": module.draft_state_names()}[spec]
    assert export.output_names[len(export.output_names) - len(carried):] == carried  # what a host carries comes out


@pytest.mark.parametrize("spec", ["bandit", "medusa"])
def test_round_inputs_refuse_the_verify_part(spec):
    with pytest.raises(DecError, match=r"as part 'verify'.*an input of the whole round's function only"):
        _ = trace(os.path.join(ROOT, "specs", f"{spec}.dec"), "verify", models=__import__("benchmarks.backend_matrix",
                  fromlist=["tiny_models"]).tiny_models(0), capacity=64)


def test_a_forced_round_exports_its_forced_table_and_drafts_what_the_grammar_forces():
    """Forced drafts (`grammar_forced`) export as table lookups: each state's forced tokens are a buffer beside the
    grammar's tables, and the function drafts what the grammar forces from the start state and commits a walk the
    grammar allows."""
    text = 'decoder g(k: int = 4) {\n target = model("target")\n sampler = temperature(1.0)\n' \
           ' propose = forced(max = k)\n verify = rejection\n grammar = regex("""abcabc(d|e)+""")\n}'
    matcher, module = letter_grammar_round(text)
    assert "grammar_grammar_forced" in dict(module.named_buffers())
    for seed in range(3):
        tokens, accepted, drafted, *_ = module(*module.example_inputs(seed=seed))
        assert drafted.tolist() == [4, 4]  # "abcabc" is forced, a letter a token (tokens repeat one letter): its first four
        for row, n in zip(tokens.tolist(), accepted.tolist()):
            state = matcher.start
            for t in row[: n + 1]:
                state = int(matcher.next_state([state], [t])[0])
                assert state >= 0, (seed, row)


def test_verify_module_matches_eager_rules():
    """VerifyModule (what is exported) against the eager interpreter's rules on the same inputs."""
    from types import SimpleNamespace

    from decspec.backends.eager.rules import RULES
    from decspec.backends.interpreter import run_graph

    for spec in VERIFY_SPECS:
        dec = decspec.compile(os.path.join(ROOT, "specs", f"{spec}.dec"))
        module = VerifyModule(dec.graph, batch=3, vocab=32)
        for seed in range(3):
            args = module.example_inputs(seed)
            ours = module(*args)
            rest = verified_ops(dec.graph)  # the proposal's ops (draft states included) are the module's inputs
            env = {op.outputs[i]: a for (_, op, i), a in zip(module.inputs, args)}
            col, u = 0, args[-1]
            for op in rest:
                if op.name == "uniform":  # the same columns as the generated code reads
                    shape = [int(d) for d in op.param("shape")[1:]]
                    width = math.prod(shape)
                    env[op.outputs[0]] = u[:, col] if not shape else u[:, col:col + width].reshape(-1, *shape)
                    col += width
            graph = SimpleNamespace(inputs=list(env), ops=[op for op in rest if op.name != "uniform"], outputs=[])
            state = SimpleNamespace(committed=None)
            run_graph(graph, list(env.values()), state, RULES, "eager")
            for a, b in zip(ours, state.committed):
                assert torch.equal(a, b), spec


def test_cli_writes_a_module(tmp_path, capsys):
    from decspec.cli import main

    out = tmp_path / "verify.mlir"
    spec = os.path.join(ROOT, "specs", "speculative.dec")
    assert main(["emit", spec, "--format", "mlir", "--part", "verify", "--dialect", "linalg", "-o", str(out)]) == 0
    text = out.read_text()
    assert "func.func @verify" in text and "linalg.generic" in text
    opt_parses(text, tmp_path)


@pytest.mark.parametrize("dialect", sorted(UNSUPPORTED))
def test_unsupported_dialect_names_the_op_and_the_spec_line(dialect):
    with pytest.raises(DecError) as e:
        lower(traced("speculative", "verify"), dialect)
    message = str(e.value)
    assert UNSUPPORTED[dialect] in message and "has no lowering" in message
    if dialect == "tosa":
        assert "sampler_probs" in message and "spec line 9" in message  # speculative.dec line 9: the sampler


def test_model_without_static_step_names_the_model_call():
    from decspec.stdlib.models.table import TableModel

    target, draft = TableModel.random(8, 1, seed=0), TableModel.random(8, 1, seed=1)
    dec = decspec.compile(os.path.join(ROOT, "specs", "speculative.dec"), target=target, draft=draft)
    with pytest.raises(DecError, match=r"model_call.*spec line 10.*TableModel"):
        export_mlir(dec, part="round")


@pytest.mark.parametrize("spec", HOST_SPECS or [pytest.param(None, marks=pytest.mark.skip(reason="no grammar spec"))])
def test_host_ops_name_the_op_and_the_spec_line(spec):
    op = _host_op(spec)
    with pytest.raises(DecError, match=rf"cannot export op '{op.name}' \(spec line {op.meta.line}:{op.meta.col}\)"):
        export_mlir(os.path.join(ROOT, "specs", f"{spec}.dec"), part="verify")


@pytest.mark.parametrize("spec", CONTEXT_SPECS or [pytest.param(None, marks=pytest.mark.skip(reason="no penalty spec"))])
def test_verify_part_with_a_penalty_names_the_op_and_the_spec_line(spec):
    op = _context_op(spec)
    with pytest.raises(DecError, match=rf"op '{op.name}' reads the context \(spec line {op.meta.line}:{op.meta.col}\)"):
        export_mlir(os.path.join(ROOT, "specs", f"{spec}.dec"), part="verify")


def test_unknown_dialect_and_part():
    with pytest.raises(DecError, match="unknown MLIR dialect 'spirv'"):
        export_mlir(os.path.join(ROOT, "specs", "speculative.dec"), dialect="spirv")
    with pytest.raises(DecError, match="unknown part"):
        export_mlir(os.path.join(ROOT, "specs", "speculative.dec"), part="draft")


def test_dialect_table_is_complete():
    assert set(SUPPORTED) | set(UNSUPPORTED) == set(DIALECTS)
