"""stdlib/grammars/json_schema/: the automaton accepts valid instances, never an invalid one (zero false
accepts: each keyword applied exactly where keywords combine, or refused), and errors name the JSON path."""
from __future__ import annotations

import doctest
import importlib
import json
import random
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.json_schema_suite import exact_number
from decspec.stdlib.grammars import (CFGMatcher, GrammarError, choice_to_regex, compile_grammar, compile_regex, schema_to_dfa,
                                     schema_to_regex)
from decspec.stdlib.grammars.json_schema import ANNOTATIONS, FORMATS, SUPPORTED, UNSUPPORTED, SchemaGrammar, compile_schema
from decspec.stdlib.grammars.automaton import random_examples
from decspec.stdlib.grammars.json_schema.formats import EXACT as EXACT_FORMATS
from decspec.stdlib.grammars.json_schema.formats import OVER as FORMAT_OVER

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


def instances(schema: dict, root: dict):
    """Values valid under `schema`, for the keywords the schemas above use."""
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


@cache
def dfa_of(name: str):
    return schema_to_dfa(SCHEMAS[name])


def sample(dfa, rng: random.Random, limit: int = 200) -> bytes:
    return random_examples(dfa, rng, 1, limit)[0]


def valid_samples(schema, count: int = 60, seed: int = 0):
    dfa = compile_schema(schema)
    rng = random.Random(seed)
    return [json.loads(sample(dfa, rng).decode()) for _ in range(count)]


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(st.sampled_from(sorted(SCHEMAS)).flatmap(lambda name: st.tuples(st.just(name), instances(SCHEMAS[name], SCHEMAS[name]))))
def test_valid_instances_match(case):
    name, value = case
    for text in dumps_styles(value):
        assert dfa_of(name).matches(text), (name, text)


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
    ("person", '{"name": "bob", "name": "bob", "age": 3}'),      # a name twice
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
    assert not dfa_of(name).matches(text)


def test_whitespace_and_empty_objects():
    for text in ["{}", "{ }", '{"c": null}', '{ "a" : 1 , "c" : null }', '{"a":1,"b":2,"c":null}']:
        assert dfa_of("all_optional").matches(text), text
    assert schema_to_regex('{"type": "string", "maxLength": 1}').startswith('"')


# item 1 of issue 15: every probe that used to be a false accept

def accepts(schema, text: str) -> bool:
    dfa = compile_schema(schema)
    return dfa is not None and dfa.matches(text)


def test_pattern_constrains_the_decoded_value():
    schema = {"type": "string", "pattern": "^.*$"}
    for text in ['"a\\nb"', '"a\nb"', '"a"b"', '"a\\u000ab"', '"\x01"', '"a\\"']:
        assert not accepts(schema, text), text
    for text in ['"a\\"b"', '"\\u00e9"', '"é"', '"\\ud83d\\ude00"', '"a\\\\b"', '""']:
        assert accepts(schema, text), text
    for value in valid_samples(schema):
        assert "\n" not in value and "\r" not in value
    assert accepts({"type": "string", "pattern": "b"}, '"abc"')  # not anchored: matches anywhere
    assert not accepts({"type": "string", "pattern": "^b"}, '"abc"')
    assert accepts({"type": "string", "pattern": "^a$"}, '"\\u0061"')  # an escape decodes to the character


@pytest.mark.parametrize("schema, good, bad", [
    ({"type": "integer", "enum": [1, "a"]}, ["1"], ['"a"']),
    ({"type": "string", "maxLength": 2, "enum": ["ab", "abc", 1]}, ['"ab"'], ['"abc"', "1"]),
    ({"const": "abc", "maxLength": 2}, [], ['"abc"']),
    ({"type": "string", "anyOf": [{"const": "a"}, {"const": 1}]}, ['"a"'], ["1"]),
    ({"required": ["a"], "oneOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"b": {"type": "integer"}}}]},
     [], ["{}", '{"a": 1}', '{"b": 1}']),  # {"a": 1} meets both branches
    ({"required": ["a"], "oneOf": [{"properties": {"a": {"type": "integer"}}, "additionalProperties": False},
                                   {"properties": {"a": {"type": "string"}}}]}, ['{"a": 1}', '{"a": "x"}'], ["{}", '{"a": null}']),
    ({"maxLength": 1, "allOf": [{"type": "string"}]}, ['"a"'], ['"ab"', "1"]),
    ({"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s", "maxLength": 2}, ['"ab"'], ['"abc"']),
    ({"type": "string", "format": "date", "maxLength": 5}, [], ['"2024-01-01"']),
    ({"type": "string", "format": "uuid", "minLength": 37}, [], ['"123e4567-e89b-12d3-a456-426614174000"']),
    ({"type": "object", "additionalProperties": {"type": "integer"}, "required": ["id"]}, ['{"id": 1}', '{"id": 1, "x": 2}'],
     ["{}", '{"x": 1}', '{"id": "a"}']),
    ({"$id": "https://x.org/a/root.json", "$defs": {"i": {"$id": "inner.json", "$defs": {"t": {"type": "integer"}}},
                                                   "t": {"type": "string"}},
      "properties": {"v": {"$ref": "inner.json#/$defs/t"}}}, ['{"v": 1}'], ['{"v": "a"}']),
    ({"oneOf": [{"type": "integer"}, {"minimum": 2}]}, ["1", '"a"'], ["3"]),
    ({"not": {"type": "string"}}, ["1", "null"], ['"a"']),
    ({"if": {"type": "integer"}, "then": {"minimum": 5}, "else": {"type": "string"}}, ["7", '"a"'], ["3", "null"]),
    ({"properties": {"a": {"type": "integer"}}, "additionalProperties": {"type": "string"}}, ['{"a": 1, "b": "x"}'],
     ['{"a": "x"}', '{"\\u0061": "x"}', '{"a": 1, "a": "x"}']),
    ({"patternProperties": {"^x": {"type": "integer"}}}, ['{"xa": 1}'], ['{"xa": "s"}', '{"b": 1}']),
    ({"type": "array", "uniqueItems": True, "items": {"enum": [1, 2]}}, ["[1, 2]", "[2]"], ["[1, 1]", "[1, 1.0]"]),
    ({"type": "number", "minimum": 1.5, "exclusiveMaximum": 3}, ["1.5", "2.999", "2"], ["1.49", "3", "3.0", "1e0"]),
    ({"type": "integer", "multipleOf": 3, "maximum": 10}, ["9", "-3", "0"], ["10", "4", "12"]),
])
def test_keywords_combine_by_intersection(schema, good, bad):
    for text in good:
        assert accepts(schema, text), text
    for text in bad:
        assert not accepts(schema, text), text


@pytest.mark.parametrize("fmt, good, bad", [
    ("date", ["2024-02-29", "2000-02-29", "2023-04-30", "1999-12-31"],
     ["2023-02-29", "1900-02-29", "2023-02-30", "2023-04-31", "2023-13-01", "2023-1-01"]),
    ("time", ["12:30:00Z", "23:59:59.5+05:30", "00:00:00-00:00"], ["12:30:00", "24:00:00Z", "12:30:00+5:00", "12:60:00Z"]),
    ("date-time", ["2024-02-29T12:00:00Z", "2023-01-01T00:00:00.123+01:00"], ["2023-02-29T12:00:00Z", "2023-01-01T00:00:00"]),
    ("email", ["a@b.co", "first.last+tag@sub.example.org"], ["a@", "@b.com", "a b@c.d", "a..b@c.d", ".a@b.c", "a@-b.c"]),
    ("ipv4", ["192.168.0.1", "0.0.0.0"], ["256.1.1.1", "01.2.3.4", "1.2.3"]),
    ("ipv6", ["::1", "2001:db8::8a2e:370:7334", "::ffff:192.168.0.1", "1:2:3:4:5:6:7:8"],
     ["1:2:3:4:5:6:7:8:9", "12345::", "1::2::3", ":1"]),
    ("uri", ["https://example.com/a?b=c#d", "urn:isbn:0451450523", "mailto:a@b.c"], ["//example.com", "a b:c", "http://a b"]),
    ("uuid", ["123e4567-e89b-12d3-a456-426614174000"], ["123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400g"]),
])
def test_formats(fmt, good, bad):
    schema = {"type": "string", "format": fmt}
    for value in good:
        assert accepts(schema, json.dumps(value)), value
    for value in bad:
        assert not accepts(schema, json.dumps(value)), value


FORMAT_SUITE = Path(__file__).parent / "data" / "json-schema-test-suite" / "tests" / "draft2020-12" / "optional" / "format"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_formats_against_the_test_suite(fmt):
    """The suite's format cases: no invalid string is accepted; every valid one is in the over-approximation
    (what `not` and `oneOf` rely on; the format itself may be a stricter subset)."""
    strict = compile_regex(FORMATS[fmt])
    over = strict if fmt in EXACT_FORMATS else compile_regex(FORMAT_OVER[fmt])
    for group in json.loads((FORMAT_SUITE / f"{fmt}.json").read_text()):
        for case in group["tests"]:
            value = case["data"]
            if not isinstance(value, str) or any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
                continue
            if case["valid"]:
                assert over.matches(value), (fmt, case["description"])
            else:
                assert not strict.matches(value), (fmt, case["description"])


@pytest.mark.parametrize("name", ["ecmascript-regex", "non-bmp-regex"])
def test_patterns_follow_ecma_262(name):
    """The suite's optional ECMA-262 pattern cases: every one whose schema compiles agrees (`\\cX` and
    `\\p{...}` are refused)."""
    run = 0
    for group in json.loads((FORMAT_SUITE.parent / f"{name}.json").read_text()):
        try:
            grammar = compile_schema(group["schema"])
        except GrammarError:
            continue
        for case in group["tests"]:
            texts = [json.dumps(case["data"], ensure_ascii=False), json.dumps(case["data"])]
            assert any(grammar.matches(t) for t in texts) == case["valid"], (group["description"], case["description"])
            run += 1
    assert run >= 12


def test_enum_objects_match_both_spacings():
    schema = {"enum": [{"a": [1, 2]}, [{"b": None}]]}
    for value in schema["enum"]:
        for text in dumps_styles(value):
            assert accepts(schema, text), text
    assert not accepts(schema, '{"a": [1]}')


def test_samples_are_valid_json_of_the_schema():
    """Random texts from the automata parse as JSON and validate under jsonschema (when installed), numbers
    read exactly (JSON Schema's numbers are decimals; a float64 parser can round one across a bound)."""
    jsonschema = pytest.importorskip("jsonschema")
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    for i, schema in enumerate([*SCHEMAS.values(), {"type": "string", "pattern": "^[^a]*$"},
                                {"not": {"type": "integer"}}, {"type": "array", "contains": {"const": 1}, "maxContains": 2},
                                {"exclusiveMaximum": 1, "multipleOf": 0.25}]):
        exact = json.loads(json.dumps(schema), parse_float=exact_number)
        dfa, rng = compile_schema(schema), random.Random(i)
        for _ in range(30):
            value = json.loads(sample(dfa, rng).decode(), parse_float=exact_number)
            jsonschema.validate(value, exact, format_checker=checker)


TREE = {"$defs": {"node": {"type": "object", "properties": {"value": {"type": "integer"},
                                                          "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                           "required": ["value"]}},
        "$ref": "#/$defs/node"}


def test_dynamic_ref_resolves_in_the_dynamic_scope():
    generic = {"$id": "https://x.org/list", "type": "array", "items": {"$dynamicRef": "#item"},
               "$defs": {"default": {"$dynamicAnchor": "item"}}}
    strings = {"$id": "https://x.org/strings", "$ref": "list", "$defs": {"list": generic, "s": {"$dynamicAnchor": "item", "type": "string"}}}
    assert accepts(strings, '["a", "b"]') and not accepts(strings, "[1]")
    assert accepts(generic, "[1]")  # alone, the list's own anchor (anything)


def test_recursive_schemas_compile_to_a_lark_grammar():
    grammar = compile_schema(TREE)
    assert isinstance(grammar, SchemaGrammar) and "start:" in grammar.text
    deep = {"value": 1}
    for i in range(12):  # deeper than any automaton's bound
        deep = {"value": i, "children": [deep, {"value": -i}]}
    for value in (deep, {"value": 0, "children": []}):
        for text in dumps_styles(value):
            assert grammar.matches(text), text
    for text in ['{"children": []}', '{"value": 1, "children": [{"value": "x"}]}', '{"value": 1, "children": [1]}',
                 '{"value": 1, "other": 2}']:
        assert not grammar.matches(text), text
    with pytest.raises(GrammarError, match="is recursive"):
        schema_to_dfa(TREE)
    with pytest.raises(GrammarError, match="is recursive"):  # a recursive language cannot be intersected
        compile_schema({**TREE, "not": {"$ref": "#/$defs/node/properties/children"}, "$ref": "#/$defs/node/properties/children"})


def test_recursive_schema_decodes_through_the_cfg_matcher():
    vocab = [bytes([b]) for b in range(256)] + [None]
    matcher = compile_grammar("json_schema", TREE, vocab, eos_id=256, cache=False)
    assert isinstance(matcher, CFGMatcher)
    jsonschema = pytest.importorskip("jsonschema")
    rng, done = random.Random(0), 0
    for _ in range(40):  # random walks under the masks: every finished text is valid
        state, out = matcher.start, bytearray()
        while len(out) < 300:
            allowed = matcher.allowed(state).tolist()
            if 256 in allowed and (rng.random() < 0.3 or len(allowed) == 1):
                jsonschema.validate(json.loads(out.decode()), TREE)
                done += 1
                break
            byte = rng.choice([t for t in allowed if t != 256])
            out.append(byte)
            state = int(matcher.next_state([state], [byte])[0])
    assert done >= 10


@pytest.mark.parametrize("schema, message", [
    ({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}},
     "$.properties.tags.uniqueItems: uniqueItems on items that are not drawn from a finite set"),
    ({"type": "integer", "$recursiveRef": "#"}, "$: keyword '$recursiveRef' is not supported"),
    ({"type": "integer", "$dynamicRef": "#a"}, "$.$dynamicRef: '#a' names no anchor 'a'"),
    ({"type": "string", "maxLenght": 3}, "keyword 'maxLenght' is not supported"),
    ({"type": "strnig"}, "$.type: unknown type 'strnig'"),
    ({"$ref": "#/$defs/missing", "$defs": {}}, "$.$ref: the JSON pointer '/$defs/missing' names nothing"),
    ({"$ref": "other.json#/x"}, "$.$ref: 'other.json#/x' refers to"),
    ({"type": "string", "format": "hostname-ish"}, "$.format: format 'hostname-ish' is not supported"),
    ({"type": "string", "format": "idn-email"}, "$.format: format 'idn-email' is not supported"),
    ({"type": "string", "minLength": 3, "maxLength": 2}, "accepts nothing"),
    ({"type": "string", "pattern": "(?<=a)b"}, "$.pattern: regex"),
    ({"properties": {"a": {"pattern": "[]"}}}, "$.properties.a.pattern: regex"),
    ({"anyOf": []}, "anyOf must be a non-empty list"),
    ({"type": "integer", "multipleOf": 0.123456789}, "$.multipleOf: multipleOf 0.123456789 needs an automaton"),
    ({"$ref": "#"}, "applies itself in place"),
    ({"$schema": "http://json-schema.org/draft-03/schema#"}, "$.$schema"),
    ({"items": {"$schema": "http://json-schema.org/draft-07/schema#"}}, "$.items: an embedded schema in another draft"),
    ("{not json", "not valid JSON"),
])
def test_errors_name_the_json_path(schema, message):
    with pytest.raises(GrammarError) as info:
        schema_to_dfa(schema)
    assert message in info.value.message


def test_bad_pattern_and_empty_language_are_errors():
    with pytest.raises(GrammarError) as info:
        schema_to_dfa({"type": "object", "properties": {"code": {"type": "string", "pattern": "^a(b$"}}})
    assert info.value.message == "$.properties.code.pattern: regex \"^a(b$\" at column 3: unclosed group; close it with ')'"
    with pytest.raises(GrammarError, match="accepts nothing"):
        schema_to_dfa({"type": "string", "pattern": "[^\\s\\S]"})
    assert "did you mean 'maxLength'" in str(pytest.raises(GrammarError, schema_to_dfa, {"maxLenght": 1}).value)


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
    assert "uniqueItems" in SUPPORTED and "$dynamicRef" in SUPPORTED and "$recursiveRef" in UNSUPPORTED


def test_editor_and_vendor_annotations_are_annotations():
    schema = {"type": "string", "maxLength": 2, "markdownDescription": "**a**", "x-taplo": {"hidden": True},
              "deprecationMessage": "old", "properties": {"x-not-a-keyword": {"type": "null"}}}
    dfa = schema_to_dfa(schema)
    assert dfa.matches('"ab"') and not dfa.matches('"abc"')
    with pytest.raises(GrammarError, match="keyword 'xtaplo' is not supported"):  # no `x-` prefix: a possible typo
        schema_to_dfa({"type": "string", "xtaplo": 1})


@pytest.mark.parametrize("module", ["", ".lang", ".strings", ".formats", ".numbers", ".values", ".refs", ".recursive",
                                    ".draft4"])
def test_doctests(module):
    assert doctest.testmod(importlib.import_module("decspec.stdlib.grammars.json_schema" + module)).failed == 0
