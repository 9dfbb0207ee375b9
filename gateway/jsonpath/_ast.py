"""Syntax tree of an RFC 9535 JSONPath query (immutable; built by ``_parser``).

A query is a list of segments; a segment is child (``[...]``, ``.name``) or
descendant (``..[...]``, ``..name``) and holds selectors. Filter selectors hold
logical expressions over comparables (literals, singular queries, function
calls). Function calls carry their resolved :class:`Function` so evaluation
never looks anything up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any, TypeAlias


class FType(Enum):
    """RFC 9535 section 2.4.1 function expression types."""

    VALUE = "ValueType"
    LOGICAL = "LogicalType"
    NODES = "NodesType"


@dataclass(frozen=True, slots=True)
class NameSel:
    name: str


@dataclass(frozen=True, slots=True)
class WildcardSel:
    pass


@dataclass(frozen=True, slots=True)
class IndexSel:
    index: int


@dataclass(frozen=True, slots=True)
class SliceSel:
    start: int | None
    stop: int | None
    step: int | None


@dataclass(frozen=True, slots=True)
class FilterSel:
    expr: Expr


Selector: TypeAlias = NameSel | WildcardSel | IndexSel | SliceSel | FilterSel


@dataclass(frozen=True, slots=True)
class Segment:
    selectors: tuple[Selector, ...]
    descendant: bool


@dataclass(frozen=True, slots=True)
class Query:
    """``$...`` (absolute) or ``@...`` (relative, only inside filters)."""

    segments: tuple[Segment, ...]
    relative: bool

    @property
    def singular(self) -> bool:
        """At most one node by construction (RFC 9535 section 2.3.5.1)."""
        return all(
            not s.descendant
            and len(s.selectors) == 1
            and isinstance(s.selectors[0], NameSel | IndexSel)
            for s in self.segments
        )


LiteralValue: TypeAlias = str | int | Decimal | bool | None


@dataclass(frozen=True, slots=True)
class Literal:
    value: LiteralValue


@dataclass(frozen=True, slots=True)
class Function:
    """A function extension: parameter types, result type and implementation."""

    name: str
    params: tuple[FType, ...]
    result: FType
    impl: Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Call:
    func: Function
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # one of == != < <= > >=
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Exists:
    """A test expression on a query: true when it selects at least one node."""

    query: Query


@dataclass(frozen=True, slots=True)
class LogicalTest:
    """A test expression on a LogicalType (or NodesType) function call."""

    call: Call


@dataclass(frozen=True, slots=True)
class Not:
    expr: Expr


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Expr, ...]


Expr: TypeAlias = Literal | Query | Call | Compare | Exists | LogicalTest | Not | And | Or
