"""stdlib/grammars/json_schema.py: schema regexes accept valid instances, reject invalid ones, and errors name
the JSON path."""
from __future__ import annotations

import json
import re
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decspec.stdlib.grammars import GrammarError, choice_to_regex, compile_regex, schema_to_regex
from decspec.stdlib.grammars.json_schema import ANNOTATIONS, FORMATS, SUPPORTED, UNSUPPORTED

DEFS = {"$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                            "required": ["x", "y"]}}}
SCHEMAS = {
    "person": {
        "type": "object",
        "title": "a person",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 8},
            "age": {"type": "integer"},
            "email": {"type": "string", "format": "email"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1, "maxItems": 3},
            "active": {"type": "boolean"},
        },
        "required": ["name", "age"],
    },
    "mixed": {
        "type": "object",
        "properties": {
            "kind": {"enum": ["a", "b c", 3, None]},
            "version": {"const": "1.0"},
            "value": {"anyOf": [{"type": "null"}, {"type": "number"}, {"type": "string", "pattern": "^[a-z]{2}[0-9]$"}]},
            "when": {"type": "string", "format": "date-time"},
            "id": {"type": ["string", "integer"]},
        },
        "required": ["version"],
    },
    "refs": {
        **DEFS,
        "type": "object",
        "properties": {"at": {"$ref": "#/$defs/point"}, "path": {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 2}},
        "required": ["at"],
    },
    "map": {"type": "object", "additionalProperties": {"type": "boolean"}},
    "dates": {"type": "array", "items": {"oneOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "uuid"},
                                                   {"type": "string", "format": "time"}]}, "maxItems": 2},
    "all_optional": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "null"}}},
}
TEXT = st.text(st.characters(exclude_categories=("Cs",), max_codepoint=0x2FFF), max_size=6)


@cache
def regex_and_dfa(name: str):
    regex = schema_to_regex(SCHEMAS[name])
    return regex, compile_regex(regex)


def instances(schema: dict, root: dict):
    """Values valid under `schema`, for the keywords this module supports."""
    if "$ref" in schema:
        return instances(root["$defs"][schema["$ref"].split("/")[-1]], root)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([instances(s, root) for s in schema[key]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        return st.one_of([instances({**schema, "type": k}, root) for k in kind])
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"].strip("^$"), fullmatch=True)
        if "format" in schema:
            return st.from_regex(FORMATS[schema["format"]], fullmatch=True)
        return st.text(st.characters(exclude_categories=("Cs",)), min_size=schema.get("minLength", 0),
                       max_size=schema.get("maxLength", 6))
    if kind == "integer":
        return st.integers(-10**12, 10**12)
    if kind == "number":
        return st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False, allow_infinity=False))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(instances(schema["items"], root), min_size=schema.get("minItems", 0), max_size=schema.get("maxItems", 3))
    if "additionalProperties" in schema:
        return st.dictionaries(TEXT, instances(schema["additionalProperties"], root), max_size=3)
    properties, required = schema.get("properties", {}), schema.get("required", [])
    present = st.fixed_dictionaries({name: st.booleans() for name in properties})
    values = st.fixed_dictionaries({name: instances(s, root) for name, s in properties.items()})
    return st.tuples(present, values).map(
        lambda pv: {k: pv[1][k] for k in properties if k in required or pv[0][k]})  # in declared order


def dumps_styles(value):
    return [json.dumps(value), json.dumps(value, separators=(",", ":")), json.dumps(value, ensure_ascii=False)]


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(st.sampled_from(sorted(SCHEMAS)).flatmap(lambda name: st.tuples(st.just(name), instances(SCHEMAS[name], SCHEMAS[name]))))
def test_valid_instances_match(case):
    name, value = case
    regex, machine = regex_and_dfa(name)
    for text in dumps_styles(value):
        assert re.fullmatch(regex, text), (name, text)
        assert machine.matches(text), (name, text)


@pytest.mark.parametrize("name, text", [
    ("person", '{"age": 3}'),                                    # required 'name' missing
    ("person", '{"name": "bob", "age": 3, "x": 1}'),             # closed object
    ("person", '{"age": 3, "name": "bob"}'),                     # declared order
    ("person", '{"name": "bob", "age": 3.5}'),                   # integer
    ("person", '{"name": "", "age": 3}'),                        # minLength 1
    ("person", '{"name": "123456789", "age": 3}'),               # maxLength 8
    ("person", '{"name": "bob", "age": 3, "tags": []}'),         # minItems 1
    ("person", '{"name": "bob", "age": 3, "tags": ["a","b","c","d"]}'),
    ("person", '{"name": "bob", "age": 3, "email": "nope"}'),
    ("person", '{"name": "bob", "age": 03}'),                    # JSON integers have no leading zeros
    ("person", '{"name": "bob", "age": 3,}'),                    # trailing comma
    ("person", '{"name": "b"b", "age": 3}'),                     # unescaped quote
    ("person", '{"name": "b\nb", "age": 3}'),                    # raw control character
    ("person", '{"name":  "bob", "age": 3}'),                    # two spaces
    ("mixed", '{"version": "1.1"}'),
    ("mixed", '{"kind": "c", "version": "1.0"}'),
    ("mixed", '{"version": "1.0", "value": "ab"}'),
    ("mixed", '{"version": "1.0", "when": "2024-13-01T00:00:00Z"}'),
    ("mixed", '{"version": "1.0", "id": true}'),
    ("refs", '{"at": {"x": 1}}'),
    ("refs", '{"at": {"x": 1, "y": 2}, "path": [{"x": 1, "y": 2}, {"x": 1, "y": 2}, {"x": 1, "y": 2}]}'),
    ("map", '{"a": 1}'),
    ("all_optional", '{, "b": 1}'),
    ("all_optional", '{"a": 1 "b": 2}'),
])
def test_invalid_instances_do_not_match(name, text):
    regex, machine = regex_and_dfa(name)
    assert not re.fullmatch(regex, text) and not machine.matches(text)


def test_whitespace_and_empty_objects():
    regex, machine = regex_and_dfa("all_optional")
    for text in ["{}", "{ }", '{"c": null}', '{ "a" : 1 , "c" : null }', '{"a":1,"b":2,"c":null}']:
        assert machine.matches(text), text
    assert schema_to_regex('{"type": "array", "items": {"type": "null"}, "maxItems": 0}') == r"\[[ ]?\]"


@pytest.mark.parametrize("schema, message", [
    ({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}},
     "$.properties.tags: keyword 'uniqueItems' is not supported"),
    ({"type": "integer", "minimum": 0}, "$: keyword 'minimum' is not supported"),
    ({"type": "string", "maxLenght": 3}, "keyword 'maxLenght' is not supported"),
    ({"type": "strnig"}, "$.type: unknown type 'strnig'"),
    ({"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}},
      "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}}},
     "$.$defs.node.properties.next.$ref: recursive $ref '#/$defs/node'"),
    ({"$ref": "#/$defs/missing", "$defs": {}}, "'#/$defs/missing' names no definition"),
    ({"$ref": "other.json#/x"}, "only '#/$defs/NAME' and '#/definitions/NAME' refs are supported"),
    ({"type": "string", "format": "hostname"}, "$.format: format 'hostname' is not supported"),
    ({"type": "string", "minLength": 3, "maxLength": 2}, "minLength 3 is greater than maxLength 2"),
    ({"type": "string", "pattern": "a", "maxLength": 2}, "'pattern' together with 'maxLength'"),
    ({"type": "array"}, "an array without 'items'"),
    ({}, "a schema without 'type'"),
    ({"type": "object", "properties": {"a": {"type": "null"}}, "required": ["b"]}, "required property 'b'"),
    ({"type": "object", "properties": {"a": {"type": "null"}}, "additionalProperties": True}, "additionalProperties"),
    ({"anyOf": []}, "anyOf must be a non-empty list"),
    ({"type": "array", "items": {"type": "number"}, "prefixItems": []}, "keyword 'prefixItems'"),
    ("{not json", "not valid JSON"),
])
def test_errors_name_the_json_path(schema, message):
    with pytest.raises(GrammarError) as info:
        schema_to_regex(schema)
    assert message in info.value.message


def test_bad_pattern_and_empty_language_are_errors():
    with pytest.raises(GrammarError) as info:
        schema_to_regex({"type": "object", "properties": {"code": {"type": "string", "pattern": "^a(b$"}}})
    assert info.value.message == "$.properties.code.pattern: regex \"a(b\" at column 2: unclosed group; close it with ')'"
    with pytest.raises(GrammarError, match="accepts nothing"):
        compile_regex(schema_to_regex({"type": "string", "pattern": "[^\\s\\S]"}))
    assert "did you mean 'maxLength'" in str(pytest.raises(GrammarError, schema_to_regex, {"maxLenght": 1}).value)


def test_choice():
    options = ["a.b", "c|d", "(x)", "é", "a b", "new\nline", "[*]", ""]
    machine = compile_regex(choice_to_regex(options))
    for option in options:
        assert machine.matches(option)
    for other in ["axb", "c", "d", "x", "ab", "a  b", "[]", "e"]:
        assert not machine.matches(other)
    with pytest.raises(GrammarError, match="non-empty list"):
        choice_to_regex([])


def test_keyword_tables():
    assert not set(SUPPORTED) & set(UNSUPPORTED) and not set(SUPPORTED) & set(ANNOTATIONS)
    assert "uniqueItems" in UNSUPPORTED and "properties" in SUPPORTED
