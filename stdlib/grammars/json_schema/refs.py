"""`$ref` resolution: every schema resource (`$id`) and anchor (`$anchor`, `$dynamicAnchor`, a draft-7
`"$id": "#name"`) of a document, found by walking the keywords that hold schemas (never `enum`, `const`
or unknown keywords), each with its base URI; a reference is resolved against the base of the schema it
sits in: a JSON pointer (`#/$defs/a~1b`, percent-decoded), an anchor (`#name`), or another resource
(`other.json`, `urn:...`), in this document or in the `remotes` the caller passed (no network).

    >>> doc = {"$id": "http://x.org/a.json", "$defs": {"b": {"$id": "b.json", "$anchor": "it", "type": "null"}}}
    >>> index = Index(doc, draft=2020)
    >>> index.resolve("b.json#it", index.base(doc), "$").path
    '$.$defs.b'
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin

from decspec.dsl.diagnostics import excerpt
from decspec.stdlib.grammars.errors import GrammarError

DEFAULT_BASE = "https://decspec.invalid/schema.json"  # the base URI of a document without an absolute $id
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
ONE = ("additionalProperties", "contains", "propertyNames", "if", "then", "else", "not", "unevaluatedItems",
       "unevaluatedProperties", "additionalItems", "contentSchema", "items")
MANY = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
NAMED = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")


@dataclass(frozen=True)
class Located:
    """A schema and where it is: the JSON path shown in messages, and the dynamic scope it is evaluated in
    (the schema resources entered on the way, outermost first; kept only for documents with `$dynamicRef`)."""

    schema: Any
    path: str
    scope: tuple[str, ...] = ()


def child_path(path: str, *keys) -> str:
    for key in keys:
        path += f"[{key}]" if isinstance(key, int) else f".{excerpt(str(key))}"
    return path


def join(base: str, ref: str) -> str:
    """`ref` resolved against `base` (RFC 3986 for hierarchical URIs; a fragment against any URI)."""
    if SCHEME.match(ref):
        return ref
    if ref.startswith("#"):
        return base.partition("#")[0] + ref
    if base.startswith("urn:"):
        raise GrammarError(f"cannot resolve the relative reference '{excerpt(ref)}' against the URN '{excerpt(base)}'")
    return urljoin(base, ref)


def subschemas(schema: dict, path: str):
    """(subschema, its path) for the keywords of `schema` that hold schemas."""
    for key in ONE:
        if key in schema and isinstance(schema[key], (dict, bool)):
            yield schema[key], child_path(path, key)
    for key in MANY:
        if key in schema and isinstance(schema[key], list):
            for i, sub in enumerate(schema[key]):
                yield sub, child_path(path, key, i)
    for key in NAMED:
        if key in schema and isinstance(schema[key], dict):
            for name, sub in schema[key].items():
                if isinstance(sub, (dict, bool)):
                    yield sub, child_path(path, key, name)


class Index:
    """The resources and anchors of a document and of the remotes it refers to."""

    def __init__(self, root: Any, draft: int, remotes: dict[str, Any] | None = None):
        self.draft = draft
        self.remotes = dict(remotes or {})
        self.resources: dict[str, Located] = {}
        self.anchors: dict[str, Located] = {}
        self.dynamic_anchors: dict[str, Located] = {}  # uri#name of each $dynamicAnchor
        self.dynamic = "$dynamicRef" in json.dumps([root, self.remotes])  # whether scopes matter
        self.bases: dict[int, str] = {}
        self.paths: dict[int, str] = {}
        self.keep: list[Any] = []  # the walked documents, so the ids above stay theirs
        self.add_document(root, DEFAULT_BASE, "$")

    def add_document(self, doc: Any, uri: str, path: str) -> None:
        self.keep.append(doc)
        self.resources.setdefault(uri.partition("#")[0], Located(doc, path))
        self.walk(doc, uri.partition("#")[0], path)

    def walk(self, schema: Any, base: str, path: str) -> None:
        if not isinstance(schema, dict):
            return
        own = schema.get("$id")
        ignored = self.draft < 2019 and "$ref" in schema  # draft 7: $ref's siblings, $id included, are ignored
        if isinstance(own, str) and not ignored:
            if self.draft < 2019 and own.startswith("#"):
                self.anchors[base + own] = Located(schema, path)
            else:
                uri, _, fragment = join(base, own).partition("#")
                base = uri
                self.resources[uri] = Located(schema, path)
                if fragment and self.draft < 2019:
                    self.anchors[f"{uri}#{fragment}"] = Located(schema, path)
        for key in ("$anchor", "$dynamicAnchor"):
            if isinstance(schema.get(key), str):
                self.anchors.setdefault(f"{base}#{schema[key]}", Located(schema, path))
        if isinstance(schema.get("$dynamicAnchor"), str):
            self.dynamic_anchors.setdefault(f"{base}#{schema['$dynamicAnchor']}", Located(schema, path))
        self.bases[id(schema)] = base
        self.paths[id(schema)] = path
        for sub, sub_path in subschemas(schema, path):
            self.walk(sub, base, sub_path)

    def base(self, schema: Any) -> str:
        return self.bases.get(id(schema), DEFAULT_BASE)

    def enter(self, loc: Located) -> Located:
        """`loc` with the resource it sits in added to its dynamic scope (once: the outermost counts)."""
        if not self.dynamic or not isinstance(loc.schema, dict):
            return loc
        uri = self.base(loc.schema)
        return loc if uri in loc.scope else Located(loc.schema, loc.path, (*loc.scope, uri))

    def resolve_dynamic(self, ref: Any, base: str, loc: Located) -> Located:
        """`$dynamicRef`: as `$ref`, except that a plain-name fragment landing on a `$dynamicAnchor` of that
        name goes to the outermost resource in the dynamic scope that has one (draft 2020-12, 8.2.3.2)."""
        target = self.resolve(ref, base, loc.path, "$dynamicRef")
        fragment = unquote(join(base, ref).partition("#")[2]) if isinstance(ref, str) else ""
        if fragment and not fragment.startswith("/") and isinstance(target.schema, dict) \
                and target.schema.get("$dynamicAnchor") == fragment:
            for uri in loc.scope:
                found = self.dynamic_anchors.get(f"{uri}#{fragment}")
                if found is not None:
                    return found
        return target

    def resolve(self, ref: Any, base: str, path: str, keyword: str = "$ref") -> Located:
        """The schema `ref` (the value of a `$ref` at `path`) names."""
        where = f"{path}.{keyword}"
        if not isinstance(ref, str):
            raise GrammarError(f"{where}: {keyword} must be a string")
        try:
            uri, _, fragment = join(base, ref).partition("#")
        except GrammarError as e:
            raise GrammarError(f"{where}: {e.message}") from None
        if uri not in self.resources:
            if uri not in self.remotes:
                raise GrammarError(f"{where}: '{excerpt(ref)}' refers to '{excerpt(uri)}', a document that is not "
                                   "available (no network: only this schema's own resources and the remotes passed in)")
            self.add_document(self.remotes[uri], uri, f"{excerpt(uri)}$")
        resource = self.resources[uri]
        fragment = unquote(fragment)
        if not fragment:
            return resource
        if not fragment.startswith("/"):
            found = self.anchors.get(f"{uri}#{fragment}")
            if found is None:
                raise GrammarError(f"{where}: '{excerpt(ref)}' names no anchor '{excerpt(fragment)}' in '{excerpt(uri)}'")
            return found
        node, at = resource.schema, resource.path
        for token in fragment[1:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and token in node:
                node, at = node[token], child_path(at, token)
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node, at = node[int(token)], child_path(at, int(token))
            else:
                raise GrammarError(f"{where}: the JSON pointer '{excerpt(fragment)}' names nothing in '{excerpt(uri)}'")
        return Located(node, self.paths.get(id(node), at))
