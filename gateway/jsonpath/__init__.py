"""RFC 9535 JSONPath: parse once, evaluate exactly.

Why our own implementation rather than a library: the masking engine needs
three things libraries do not give together — (1) the syntax tree, to compile
the common shapes (``$..name``, ``$.a.b``, ``$..a[*].b``) into a key/position
automaton that masks a document in one walk; (2) exact numbers: documents hold
:class:`gateway.jsoncodec.Number` for decimals and wide integers, which filters
must compare by value without rounding through float; (3) node locations for
``gateway explain`` and for applying filter/slice paths in place. jsonpath-ng
fails 336 of the 703 compliance cases; python-jsonpath and jsonpath-rfc9535 pass
them all but know nothing of ``Number``. This package passes all 703 cases of
the JSONPath Compliance Test Suite (``tests/test_jsonpath_cts.py``) and adds no
dependency (I-Regexp ``\\p{..}`` classes are expanded from :mod:`unicodedata`).

Public API: :func:`compile_path` -> :class:`JSONPath` (``find`` returns
``(location, value)`` pairs, ``values`` just the values), :func:`format_location`
for RFC 9535 normalized paths, :class:`JSONPathSyntaxError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.jsonpath._ast import IndexSel, NameSel, Query, Segment, WildcardSel
from gateway.jsonpath._eval import (
    FUNCTIONS,
    NOTHING,
    Location,
    json_equal,
    query_nodes,
    query_values,
)
from gateway.jsonpath._parser import JSONPathSyntaxError, Parser

__all__ = [
    "NOTHING",
    "JSONPath",
    "JSONPathSyntaxError",
    "Location",
    "Query",
    "Segment",
    "compile_path",
    "format_location",
    "json_equal",
]


@dataclass(frozen=True, slots=True)
class JSONPath:
    """A compiled query. ``text`` is the source; ``query`` its syntax tree."""

    text: str
    query: Query

    def find(self, document: Any) -> list[tuple[Location, Any]]:
        return query_nodes(self.query, document, document)

    def values(self, document: Any) -> list[Any]:
        return query_values(self.query, document, document)

    @property
    def is_simple(self) -> bool:
        """Only name, wildcard and index selectors: compilable to an automaton."""
        return all(
            isinstance(sel, NameSel | WildcardSel | IndexSel)
            for seg in self.query.segments
            for sel in seg.selectors
        )


def compile_path(text: str) -> JSONPath:
    """Parse ``text``; raises :class:`JSONPathSyntaxError` if it is not RFC 9535."""
    return JSONPath(text, Parser(text, FUNCTIONS).parse())


_NAME_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_name(name: str) -> str:
    out = []
    for c in name:
        if c == "'" or c == "\\":
            out.append("\\" + c)
        elif c in _NAME_ESCAPES:
            out.append(_NAME_ESCAPES[c])
        elif ord(c) < 0x20:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def format_location(location: Location) -> str:
    """``("data", 0, "phone")`` -> ``$['data'][0]['phone']`` (RFC 9535 normalized path)."""
    parts = ["$"]
    for p in location:
        parts.append(f"[{p}]" if isinstance(p, int) else f"['{_escape_name(p)}']")
    return "".join(parts)
