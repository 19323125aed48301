"""Draft 4 documents (stdlib/grammars/json_schema/draft4.py): read as draft 7 after rewriting `id` and the boolean
exclusive bounds; the official suite's draft 4 files run in tests/test_json_schema_suite.py."""
from __future__ import annotations

import pytest

from decspec.stdlib.grammars import GrammarError
from decspec.stdlib.grammars.json_schema import compile_schema, schema_draft
from decspec.stdlib.grammars.json_schema.draft4 import as_draft7

DRAFT4 = "http://json-schema.org/draft-04/schema#"


def accepts(schema, text: str, **kwargs) -> bool:
    grammar = compile_schema({"$schema": DRAFT4, **schema}, **kwargs)
    return grammar is not None and grammar.matches(text)


def test_the_draft_is_read_from_schema():
    assert schema_draft({"$schema": DRAFT4}) == 4 and schema_draft({}, 4) == 4


@pytest.mark.parametrize("schema, good, bad", [
    ({"type": "integer", "maximum": 3, "exclusiveMaximum": True}, ["2"], ["3", "4"]),
    ({"type": "integer", "maximum": 3, "exclusiveMaximum": False}, ["3"], ["4"]),
    ({"type": "integer", "minimum": 3, "exclusiveMinimum": True}, ["4"], ["3"]),
    ({"type": "integer", "exclusiveMinimum": True}, ["-5", "0"], []),  # no bound beside it: nothing to exclude
])
def test_boolean_exclusive_bounds(schema, good, bad):
    assert all(accepts(schema, t) for t in good) and not any(accepts(schema, t) for t in bad)


def test_non_boolean_exclusive_bound_is_refused():
    with pytest.raises(GrammarError, match=r"\$.properties.n.exclusiveMaximum: exclusiveMaximum must be a boolean in draft 4"):
        compile_schema({"$schema": DRAFT4, "properties": {"n": {"maximum": 3, "exclusiveMaximum": 2}}})


def test_id_sets_the_base_and_names_anchors():
    schema = {"id": "http://x.org/root.json", "definitions": {
        "a": {"id": "a.json", "definitions": {"b": {"type": "integer"}}},
        "c": {"id": "#c", "type": "boolean"}},
        "type": "array", "items": [{"$ref": "a.json#/definitions/b"}, {"$ref": "#c"}]}
    assert accepts(schema, "[1, true]") and not accepts(schema, '["1", true]') and not accepts(schema, "[1, 1]")


def test_an_id_that_is_data_stays_data():
    schema = {"type": "object", "properties": {"id": {"enum": [{"id": "#x"}]}}, "required": ["id"]}
    assert accepts(schema, '{"id": {"id": "#x"}}')
    assert as_draft7({"$schema": DRAFT4, **schema})["properties"]["id"]["enum"] == [{"id": "#x"}]


def test_schemas_reached_only_by_a_pointer_are_rewritten():
    """`$defs` is no draft 4 keyword; a `$ref` into it still reaches a schema, which draft 4 reads."""
    schema = {"$ref": "#/$defs/n", "$defs": {"n": {"type": "integer", "maximum": 3, "exclusiveMaximum": True}}}
    assert accepts(schema, "2") and not accepts(schema, "3")


def test_remotes_in_draft4_are_rewritten_others_not():
    ref = {"$ref": "http://r.org/n.json#/definitions/n"}
    draft4 = {"definitions": {"n": {"type": "integer", "minimum": 0, "exclusiveMinimum": True}}}  # no $schema: the document's
    assert accepts(ref, "1", remotes={"http://r.org/n.json": draft4}) and not accepts(ref, "0", remotes={"http://r.org/n.json": draft4})
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "definitions": {"n": {"type": "integer", "exclusiveMinimum": 0}}}
    assert accepts(ref, "1", remotes={"http://r.org/n.json": draft7}) and not accepts(ref, "0", remotes={"http://r.org/n.json": draft7})


def test_the_input_is_not_changed():
    schema = {"$schema": DRAFT4, "id": "http://x.org/a", "maximum": 1, "exclusiveMaximum": True}
    before = repr(schema)
    compile_schema(schema)
    assert repr(schema) == before
