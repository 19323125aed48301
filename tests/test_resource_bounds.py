"""Resource bounds (issue 16, item 5): every buffer a call preallocates, and every enumeration, is sized from
what it can use and refused with its figure past a stated limit, before anything is allocated; files a
grammar imports are found beside the grammar, never in the working directory.

- generate (rounds, beam search) sizes the context from the prompt, max_new_tokens and a round's drafts, at
  most `MAX_POSITIONS` per row for models with no position limit and `MAX_CONTEXT` in all;
- `exact_distribution` (and so `decspec verify`) estimates a round's rows before enumerating it and refuses
  past its row and byte budgets, with the figure;
- a Lark `%import` resolves against the folder of the grammar that says it, whatever the working directory.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import decspec
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.table import TableModel

ROOT = Path(__file__).resolve().parent.parent
VOCAB = [b"a", b"b", b"1", b"2", None]  # a table model's tokens as bytes; 4 is EOS


# --------------------------------------------------------------------------- Lark %import


def lark_spec(folder: Path, grammar: str, lark: str, name: str = "g") -> Path:
    (folder / f"{name}.lark").write_text(lark)
    spec = folder / f"{name}.dec"
    spec.write_text(f'decoder d() {{\n    target = model("target")\n    grammar = {grammar}\n}}\n')
    return spec


def compiled(spec: Path):
    target = TableModel.random(5, 0, seed=0, eos_token_id=4)
    return decspec.compile(spec, target=target, vocab=VOCAB)


IMPORTS = {  # how the grammar imports WORD, and where the imported file lies relative to the importing grammar
    "relative": ("%import .words.WORD", "words.lark"),
    "named": ("%import words.WORD", "words.lark"),
    "relative, in a subfolder": ("%import .lib.words.WORD", "lib/words.lark"),
}


@pytest.mark.parametrize("how", IMPORTS)
@pytest.mark.parametrize("where", ["lark_file", "inline"])
def test_a_lark_import_resolves_beside_the_grammar_not_in_the_working_directory(tmp_path, monkeypatch, how, where):
    statement, path = IMPORTS[how]
    spec_dir, elsewhere = tmp_path / "spec", tmp_path / "cwd"
    (spec_dir / Path(path).parent).mkdir(parents=True, exist_ok=True)
    (elsewhere / Path(path).parent).mkdir(parents=True)
    (spec_dir / path).write_text("WORD: /a+/\n")  # only a's: the grammar the spec means
    (elsewhere / path).write_text("WORD: /1+/\n")  # a decoy in the working directory
    monkeypatch.chdir(elsewhere)
    lark = f"start: WORD\n{statement}\n"
    grammar = 'lark_file("g.lark")' if where == "lark_file" else f"lark('''{lark}''')"
    tokens = compiled(lark_spec(spec_dir, grammar, lark)).generate([[0]], max_new_tokens=6, seed=0).tokens[0]
    assert tokens and set(tokens) <= {0, 4}, tokens  # a's, then EOS: never the decoy's 1s


def test_an_import_inside_an_imported_grammar_resolves_beside_that_grammar(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "words.lark").write_text("WORD: LETTER+\n%import .letters.LETTER\n")
    (tmp_path / "lib" / "letters.lark").write_text("LETTER: \"b\"\n")
    (tmp_path / "letters.lark").write_text("LETTER: \"a\"\n")  # beside the spec, not beside words.lark: not this one
    monkeypatch.chdir(tmp_path / "lib")
    spec = lark_spec(tmp_path, 'lark_file("g.lark")', "start: WORD\n%import .lib.words.WORD\n")
    tokens = compiled(spec).generate([[0]], max_new_tokens=6, seed=0).tokens[0]
    assert tokens and set(tokens) <= {1, 4}, tokens


def test_a_missing_import_names_the_folder_searched_and_never_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "spec").mkdir()
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "words.lark").write_text("WORD: /a+/\n")
    monkeypatch.chdir(tmp_path / "cwd")
    for statement in ("%import .words.WORD", "%import words.WORD"):
        spec = lark_spec(tmp_path / "spec", 'lark_file("g.lark")', f"start: WORD\n{statement}\n")
        with pytest.raises(DecError, match=r"cannot %import 'words': no file words.lark in .*spec") as e:
            compiled(spec)
        assert "g.dec:3:15" in str(e.value)


def test_imported_grammars_are_read_as_spec_files_are(tmp_path):
    (tmp_path / "words.lark").mkdir()  # a directory where the grammar should be
    spec = lark_spec(tmp_path, 'lark_file("g.lark")', "start: WORD\n%import .words.WORD\n")
    with pytest.raises(DecError, match="is a directory, not a Lark grammar"):
        compiled(spec)


def test_lark_s_own_grammars_still_import():
    spec_text = 'decoder d() {\n    target = model("target")\n    grammar = lark("start: INT\\n%import common.INT")\n}\n'
    target = TableModel.random(5, 0, seed=0, eos_token_id=4)
    tokens = decspec.compile(spec_text, target=target, vocab=VOCAB).generate([[0]], max_new_tokens=4, seed=0).tokens[0]
    assert set(tokens) <= {2, 3, 4}


def test_the_same_grammar_text_in_two_folders_is_two_grammars(tmp_path):
    for name, word in (("one", "a"), ("two", "b")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "words.lark").write_text(f"WORD: /{word}+/\n")
    lark = "start: WORD\n%import .words.WORD\n"
    one = compiled(lark_spec(tmp_path / "one", 'lark_file("g.lark")', lark)).generate([[0]], max_new_tokens=4, seed=0)
    two = compiled(lark_spec(tmp_path / "two", 'lark_file("g.lark")', lark)).generate([[0]], max_new_tokens=4, seed=0)
    assert set(one.tokens[0]) <= {0, 4} and set(two.tokens[0]) <= {1, 4}


# --------------------------------------------------------------------------- exact enumeration (decspec verify)


def speculative(k: int, V: int):
    models = {"target": TableModel.random(V, 1, seed=0), "draft": TableModel.random(V, 1, seed=1, temperature=2.0)}
    return decspec.compile("specs/speculative.dec", models=models, k=k)


def first_round(dec, prompt, capacity):
    """The rows of the first exact round, enumerated."""
    import torch

    from decspec.backends.draft_state import DraftStates
    from decspec.backends.exact.distribution import _context, _round
    from decspec.backends.speculation_length import Policies

    g, m = dec.graph, dec._bound_models()
    ctx = _context(prompt, torch.zeros((1, 0), dtype=torch.long), torch.zeros(1, dtype=torch.long), capacity)
    return len(_round(g, m, ctx, capacity, 10**7, {}, Policies.start(g, 1, seed=0), DraftStates.start(g, m, 1))[0])


@pytest.mark.parametrize("spec, k, V", [("speculative", 2, 3), ("speculative", 3, 4), ("speculative", 4, 5), ("specinfer_tree", None, 3),
                                        ("autoregressive", None, 5)])
def test_the_first_round_s_rows_are_estimated_before_enumerating(spec, k, V):
    from decspec.backends.exact.distribution import estimate_rows, max_draft_len

    models = {"target": TableModel.random(V, 1, seed=0), "draft": TableModel.random(V, 1, seed=1, temperature=2.0)}
    dec = decspec.compile(ROOT / "specs" / f"{spec}.dec", models=models, **({"k": k} if k else {}))
    capacity = 1 + 3 + 2 * max_draft_len(dec.graph) + 4
    actual = first_round(dec, [1], capacity)
    estimate = estimate_rows(dec.graph, dec._bound_models(), [1], capacity, {})
    assert actual / 2 <= estimate <= actual * 2, (estimate, actual)


def test_a_first_round_too_large_is_refused_before_any_row_is_enumerated(monkeypatch):
    from decspec.backends.exact import TooLarge, exact_distribution
    from decspec.backends.exact.rows import Rows

    splits = []
    split = Rows.split
    monkeypatch.setattr(Rows, "split", lambda self, *a: splits.append(len(self)) or split(self, *a))
    with pytest.raises(TooLarge, match=r"needs more than [\d,]+ rows in its first round \(about [\d,]+, estimated before "
                                        r"enumerating\): about [\d.,]+ GiB at about [\d,]+ bytes a row \(the limit: 4.0 GiB of rows\)") as e:
        exact_distribution(speculative(k=14, V=5), [1], 3)
    assert splits == []  # the estimate's one-row probes never split a row
    assert e.value.rows > e.value.limit and "speculation length" in e.value.diagnostics[0].hint


def test_a_later_round_too_large_is_refused_at_the_draw_that_passes_the_limit():
    from decspec.backends.exact import TooLarge, exact_distribution

    with pytest.raises(TooLarge, match=r"more than 500 rows in round [2-9] \([\d,]+ sequences so far; one draw split them into [\d,]+\).*"
                                       r"\(the limit: max_rows\)"):
        exact_distribution(speculative(k=2, V=4), [1], 8, max_rows=500)


def test_the_byte_budget_caps_rows_whatever_max_rows_says(monkeypatch):
    from decspec.backends.exact import TooLarge, distribution

    monkeypatch.setattr(distribution, "MAX_BYTES", 1 << 20)
    with pytest.raises(TooLarge, match=r"\(the limit: 1.0 MiB of rows\)") as e:
        distribution.exact_distribution(speculative(k=3, V=5), [1], 6, max_rows=10**9)
    assert e.value.limit * distribution.row_bytes(1 + 6 + 2 * 3 + 4, 2, 3, 5) <= 1 << 20


def test_verify_too_large_everywhere_gives_the_figure_and_a_hint_in_the_spec_s_own_terms(capsys):
    from decspec.cli import main

    assert main(["verify", "specs/speculative.dec", "k=30", "--configs", "2"]) == 1
    err = capsys.readouterr().err
    assert "too large for the exact check on all 2 configurations tried" in err and "GiB" in err and "Traceback" not in err
    assert "lower k, e.g. `decspec verify FILE.dec k=15`" in err and "--max-new-tokens, now 3" in err


def test_verify_of_a_spec_whose_draft_length_is_fixed_names_no_parameter(tmp_path):
    from decspec.verify import verify_spec

    fixed = tmp_path / "fixed.dec"
    fixed.write_text((ROOT / "specs" / "speculative.dec").read_text().replace("max = k", "max = 30"))  # k is left unused
    with pytest.raises(DecError, match="too large for the exact check") as e:
        verify_spec(fixed, configs=1, max_new_tokens=1, vocab=(5, 5))
    assert e.value.diagnostics[0].hint == "draft fewer tokens per round (the spec fixes its draft length, 30: change it in the file)"
