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
