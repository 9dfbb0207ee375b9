"""Evaluation of parsed JSONPath queries over decoded JSON documents.

Documents are made of dict, list, str, bool, None, int, float and
:class:`gateway.jsoncodec.Number`. Numbers compare by mathematical value:
exact (int, Decimal literal, Number text) unless a float is involved, in which
case both sides are compared as floats. ``true`` is never equal to ``1``.

Results are lists of ``(location, value)`` nodes in RFC 9535 order: selectors
in the order written, object members in document order, descendants in
pre-order (node before its children). Locations are tuples of member names and
array indices; filter sub-queries skip them.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.jsoncodec import Number
from gateway.jsonpath._ast import (
    And,
    Call,
    Compare,
    Exists,
    Expr,
    FilterSel,
    FType,
    Function,
    IndexSel,
    Literal,
    LogicalTest,
    NameSel,
    Not,
    Or,
    Query,
    Segment,
    Selector,
    SliceSel,
    WildcardSel,
)
from gateway.jsonpath._iregexp import translate

Location = tuple[str | int, ...]
NodeList = list[tuple[Location, Any]]


class _Nothing:
    """RFC 9535 'Nothing': the absence of a value (empty singular query)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Nothing"


NOTHING: Any = _Nothing()


# -- functions --------------------------------------------------------------------
def _length(v: Any) -> Any:
    if isinstance(v, str | list | dict):
        return len(v)
    return NOTHING


def _count(nodes: list[Any]) -> int:
    return len(nodes)


def _match(s: Any, pattern: Any) -> bool:
    if not isinstance(s, str) or not isinstance(pattern, str):
        return False
    rx = translate(pattern)
    return rx is not None and rx.fullmatch(s) is not None


def _search(s: Any, pattern: Any) -> bool:
    if not isinstance(s, str) or not isinstance(pattern, str):
        return False
    rx = translate(pattern)
    return rx is not None and rx.search(s) is not None


def _value(nodes: list[Any]) -> Any:
    return nodes[0] if len(nodes) == 1 else NOTHING


V, L, N = FType.VALUE, FType.LOGICAL, FType.NODES
FUNCTIONS: dict[str, Function] = {
    "length": Function("length", (V,), V, _length),
    "count": Function("count", (N,), V, _count),
    "match": Function("match", (V, V), L, _match),
    "search": Function("search", (V, V), L, _search),
    "value": Function("value", (N,), V, _value),
}


# -- comparison -------------------------------------------------------------------
def as_number(v: Any) -> int | float | Decimal | None:
    """The numeric value of a JSON number (bool is not a number), else None."""
    t = type(v)
    if t is int or t is float or t is Decimal:
        return v  # type: ignore[no-any-return]
    if t is Number:
        try:
            return Decimal(v.text)
        except InvalidOperation:
            return None
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v
    return None


def _num_cmp(a: int | float | Decimal, b: int | float | Decimal) -> int:
    if isinstance(a, float) or isinstance(b, float):
        fa, fb = float(a), float(b)
        return (fa > fb) - (fa < fb)
    return (a > b) - (a < b)


def json_equal(a: Any, b: Any) -> bool:
    """RFC 9535 ``==``: deep, type-aware, numbers by value; Nothing equals only Nothing."""
    if a is NOTHING or b is NOTHING:
        return a is b
    na, nb = as_number(a), as_number(b)
    if na is not None or nb is not None:
        return na is not None and nb is not None and _num_cmp(na, nb) == 0
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return False


def _less(a: Any, b: Any) -> bool:
    na, nb = as_number(a), as_number(b)
    if na is not None and nb is not None:
        return _num_cmp(na, nb) < 0
    return isinstance(a, str) and isinstance(b, str) and a < b


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "==":
        return json_equal(a, b)
    if op == "!=":
        return not json_equal(a, b)
    if op == "<":
        return _less(a, b)
    if op == ">":
        return _less(b, a)
    if op == "<=":
        return _less(a, b) or json_equal(a, b)
    return _less(b, a) or json_equal(a, b)


# -- filter expressions -----------------------------------------------------------
def _test(expr: Expr, current: Any, root: Any) -> bool:
    t = type(expr)
    if t is Compare:
        c: Compare = expr  # type: ignore[assignment]
        return _compare(c.op, _operand(c.left, current, root), _operand(c.right, current, root))
    if t is Exists:
        return bool(query_values(expr.query, current, root))  # type: ignore[union-attr]
    if t is And:
        return all(_test(i, current, root) for i in expr.items)  # type: ignore[union-attr]
    if t is Or:
        return any(_test(i, current, root) for i in expr.items)  # type: ignore[union-attr]
    if t is Not:
        return not _test(expr.expr, current, root)  # type: ignore[union-attr]
    if t is LogicalTest:
        result = _call(expr.call, current, root)  # type: ignore[union-attr]
        return bool(result)
    raise TypeError(f"not a logical expression: {expr!r}")  # parser guarantees otherwise


def _operand(expr: Expr, current: Any, root: Any) -> Any:
    if isinstance(expr, Literal):
        return expr.value
    if isinstance(expr, Query):
        found = query_values(expr, current, root)
        return found[0] if found else NOTHING
    if isinstance(expr, Call):
        return _call(expr, current, root)
    raise TypeError(f"not a comparable: {expr!r}")


def _call(call: Call, current: Any, root: Any) -> Any:
    args: list[Any] = []
    for want, arg in zip(call.func.params, call.args, strict=True):
        if want is FType.VALUE:
            args.append(_operand(arg, current, root))
        elif want is FType.NODES:
            if isinstance(arg, Query):
                args.append(query_values(arg, current, root))
            else:
                args.append(_call(arg, current, root))  # type: ignore[arg-type]
        else:
            args.append(_test(arg, current, root))
    return call.func.impl(*args)


# -- selection --------------------------------------------------------------------
def _slice_indices(sel: SliceSel, n: int) -> range:
    step = 1 if sel.step is None else sel.step
    if step == 0:
        return range(0)
    if step > 0:
        start = 0 if sel.start is None else sel.start
        stop = n if sel.stop is None else sel.stop
        start = start + n if start < 0 else start
        stop = stop + n if stop < 0 else stop
        return range(min(max(start, 0), n), min(max(stop, 0), n), step)
    start = n - 1 if sel.start is None else sel.start
    stop = -n - 1 if sel.stop is None else sel.stop
    start = start + n if start < 0 else start
    stop = stop + n if stop < 0 else stop
    return range(min(max(start, -1), n - 1), min(max(stop, -1), n - 1), step)


def _select(sel: Selector, loc: Location, v: Any, root: Any, out: NodeList) -> None:
    t = type(sel)
    if t is NameSel:
        name = sel.name  # type: ignore[union-attr]
        if isinstance(v, dict) and name in v:
            out.append(((*loc, name), v[name]))
    elif t is IndexSel:
        if isinstance(v, list):
            i = sel.index  # type: ignore[union-attr]
            n = len(v)
            if i < 0:
                i += n
            if 0 <= i < n:
                out.append(((*loc, i), v[i]))
    elif t is WildcardSel:
        if isinstance(v, dict):
            out.extend(((*loc, k), c) for k, c in v.items())
        elif isinstance(v, list):
            out.extend(((*loc, i), c) for i, c in enumerate(v))
    elif t is SliceSel:
        if isinstance(v, list):
            out.extend(((*loc, i), v[i]) for i in _slice_indices(sel, len(v)))  # type: ignore[arg-type]
    elif t is FilterSel:
        expr = sel.expr  # type: ignore[union-attr]
        if isinstance(v, dict):
            out.extend(((*loc, k), c) for k, c in v.items() if _test(expr, c, root))
        elif isinstance(v, list):
            out.extend(((*loc, i), c) for i, c in enumerate(v) if _test(expr, c, root))


def _descendants(loc: Location, v: Any) -> Iterator[tuple[Location, Any]]:
    """The node and all its descendants, pre-order (iterative: no recursion limit)."""
    stack: list[tuple[Location, Any]] = [(loc, v)]
    while stack:
        loc, v = stack.pop()
        yield loc, v
        if isinstance(v, dict):
            stack.extend(((*loc, k), c) for k, c in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend(((*loc, i), v[i]) for i in range(len(v) - 1, -1, -1))


def _segment(seg: Segment, nodes: NodeList, root: Any) -> NodeList:
    out: NodeList = []
    for loc, v in nodes:
        if seg.descendant:
            for dloc, d in _descendants(loc, v):
                for sel in seg.selectors:
                    _select(sel, dloc, d, root, out)
        else:
            for sel in seg.selectors:
                _select(sel, loc, v, root, out)
    return out


def query_nodes(query: Query, current: Any, root: Any) -> NodeList:
    """All nodes the query selects, with locations relative to its start node."""
    nodes: NodeList = [((), current if query.relative else root)]
    for seg in query.segments:
        if not nodes:
            break
        nodes = _segment(seg, nodes, root)
    return nodes


def _select_values(sel: Selector, v: Any, root: Any, out: list[Any]) -> None:
    """:func:`_select` without locations (filters, record counting)."""
    t = type(sel)
    if t is NameSel:
        if isinstance(v, dict):
            found = v.get(sel.name, NOTHING)  # type: ignore[union-attr]
            if found is not NOTHING:
                out.append(found)
    elif t is WildcardSel:
        if isinstance(v, dict):
            out.extend(v.values())
        elif isinstance(v, list):
            out.extend(v)
    elif t is IndexSel or t is SliceSel or t is FilterSel:
        nodes: NodeList = []
        _select(sel, (), v, root, nodes)
        out.extend(x for _, x in nodes)


def query_values(query: Query, current: Any, root: Any) -> list[Any]:
    """The values the query selects, in RFC 9535 order."""
    values = [current if query.relative else root]
    for seg in query.segments:
        if not values:
            break
        out: list[Any] = []
        for v in values:
            if seg.descendant:
                for _, d in _descendants((), v):
                    for sel in seg.selectors:
                        _select_values(sel, d, root, out)
            else:
                for sel in seg.selectors:
                    _select_values(sel, v, root, out)
        values = out
    return values
