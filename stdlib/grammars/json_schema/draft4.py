"""Draft 4 documents, read as draft 7: the two keywords whose meaning changed are rewritten, in a copy.

    >>> as_draft7({"id": "http://x.org/a.json", "maximum": 5, "exclusiveMaximum": True})
    {'$id': 'http://x.org/a.json', 'exclusiveMaximum': 5}

- `id` is draft 7's `$id` (a base URI, or `#name` an anchor);
- `exclusiveMaximum: true` beside `maximum: m` is draft 7's `exclusiveMaximum: m` (likewise the minimum);
  `false`, or `true` with no bound beside it, means nothing.

Everything else a draft 4 validator reads means the same in draft 7 (`$ref` still hides its siblings, an
integer is still written without a fraction in the language decspec emits). Keywords draft 4 does not know
(`const`, `contains`, `propertyNames`, `if`, ...) are asserted as draft 7 reads them: a stricter reading than
draft 4's, which ignores them. The rewrite touches the schemas the compiler reads: those under the keywords
that hold schemas (refs.py), and whatever a `$ref` reaches, followed until nothing new is reached.
"""
from __future__ import annotations

import copy
from typing import Any

from decspec.stdlib.grammars.errors import GrammarError
from decspec.stdlib.grammars.json_schema.refs import Index, child_path, subschemas

DRAFT7 = "http://json-schema.org/draft-07/schema#"
BOUNDS = (("exclusiveMaximum", "maximum"), ("exclusiveMinimum", "minimum"))


def as_draft7(document: Any) -> Any:
    """A copy of a draft 4 document that means the same read as draft 7."""
    doc = copy.deepcopy(document)
    if not isinstance(doc, dict):
        return doc
    if "$schema" in doc:
        doc["$schema"] = DRAFT7
    done: set[int] = set()
    todo = [(doc, "$")]
    while todo:
        reached = []
        for schema, path in todo:
            reached += _rewrite(schema, path, done)
        todo = _targets(doc, reached, done)
    return doc


def _rewrite(schema: Any, path: str, done: set[int]) -> list[tuple[dict, str]]:
    """Rewrite `schema` and the schemas under it in place; -> the schemas rewritten, with their paths."""
    if not isinstance(schema, dict) or id(schema) in done:
        return []
    done.add(id(schema))
    if "id" in schema:
        own = schema.pop("id")
        schema.pop("$id", None)  # not a draft 4 keyword: the draft 4 `id` is the one that counts
        schema["$id"] = own
    for exclusive, bound in BOUNDS:
        if exclusive not in schema:
            continue
        flag = schema.pop(exclusive)
        if not isinstance(flag, bool):
            raise GrammarError(f"{child_path(path, exclusive)}: {exclusive} must be a boolean in draft 4")
        if flag and bound in schema:
            schema[exclusive] = schema.pop(bound)
    out = [(schema, path)]
    for sub, sub_path in subschemas(schema, path):
        out += _rewrite(sub, sub_path, done)
    return out


def _targets(doc: dict, rewritten: list[tuple[dict, str]], done: set[int]) -> list[tuple[Any, str]]:
    """The schemas the `$ref`s among `rewritten` reach that are not rewritten yet (a reference that does not
    resolve is left for the compiler to report)."""
    refs = [(schema, path) for schema, path in rewritten if "$ref" in schema]
    if not refs:
        return []
    try:
        index = Index(doc, 7)
    except GrammarError:
        return []
    out = []
    for schema, path in refs:
        try:
            target = index.resolve(schema["$ref"], index.base(schema), path)
        except GrammarError:
            continue
        if isinstance(target.schema, dict) and id(target.schema) not in done:
            out.append((target.schema, target.path))
    return out
