"""Recursive-descent parser for RFC 9535 JSONPath, with the well-typedness checks.

Rules this parser enforces (all from RFC 9535; the compliance suite checks them):

* no whitespace before ``$`` or after the last segment; blank space (space, tab,
  LF, CR) only where the grammar has ``S``: between segments, inside brackets,
  around operators and inside function argument lists;
* integers are I-JSON exact (|n| <= 2**53 - 1), without leading zeros; ``-0``
  is a valid number literal but not a valid index or slice bound;
* string literals use the JSON escapes plus the own-quote escape; surrogate
  escapes must form a pair; raw control characters are not allowed;
* in a comparison, queries must be singular and functions must return
  ValueType; a test expression must be a query or a LogicalType/NodesType
  function; function arguments must match the declared parameter types.

Errors raise :class:`JSONPathSyntaxError` with the 0-based offset.
"""

from __future__ import annotations

from decimal import Decimal

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

MAX_INT = 2**53 - 1
_BLANK = " \t\n\r"
_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "/": "/", "\\": "\\"}
_COMPARE_OPS = ("==", "!=", "<=", ">=", "<", ">")


class JSONPathSyntaxError(ValueError):
    """An invalid query; ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at offset {position}")
        self.message = message
        self.position = position


def _name_first(c: str) -> bool:
    o = ord(c)
    return (
        ("a" <= c <= "z")
        or ("A" <= c <= "Z")
        or c == "_"
        or 0x80 <= o <= 0xD7FF
        or 0xE000 <= o <= 0x10FFFF
    )


class _Bare:
    """A comparable parsed where a logical expression was expected (function args)."""

    __slots__ = ("node",)

    def __init__(self, node: Literal | Query | Call) -> None:
        self.node = node


class Parser:
    def __init__(self, text: str, functions: dict[str, Function]) -> None:
        self.text = text
        self.pos = 0
        self.functions = functions

    # -- helpers -----------------------------------------------------------------
    def error(self, message: str, pos: int | None = None) -> JSONPathSyntaxError:
        return JSONPathSyntaxError(message, self.pos if pos is None else pos)

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def skip_blank(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _BLANK:
            self.pos += 1

    def expect(self, s: str) -> None:
        if not self.text.startswith(s, self.pos):
            raise self.error(f"expected {s!r}")
        self.pos += len(s)

    # -- queries -----------------------------------------------------------------
    def parse(self) -> Query:
        if self.peek() != "$":
            raise self.error("a query must start with '$'")
        self.pos += 1
        query = Query(self.segments(), relative=False)
        if self.pos != len(self.text):
            raise self.error("unexpected character")
        return query

    def segments(self) -> tuple[Segment, ...]:
        out: list[Segment] = []
        while True:
            save = self.pos
            self.skip_blank()
            c = self.peek()
            if c == "[" or c == ".":
                out.append(self.segment())
            else:
                self.pos = save
                return tuple(out)

    def segment(self) -> Segment:
        if self.peek(2) == "..":
            self.pos += 2
            c = self.peek()
            if c == "[":
                return Segment(self.bracketed(), descendant=True)
            if c == "*":
                self.pos += 1
                return Segment((WildcardSel(),), descendant=True)
            return Segment((NameSel(self.member_name()),), descendant=True)
        if self.peek() == ".":
            self.pos += 1
            if self.peek() == "*":
                self.pos += 1
                return Segment((WildcardSel(),), descendant=False)
            return Segment((NameSel(self.member_name()),), descendant=False)
        return Segment(self.bracketed(), descendant=False)

    def member_name(self) -> str:
        start = self.pos
        text = self.text
        if self.pos >= len(text) or not _name_first(text[self.pos]):
            raise self.error("expected a member name")
        self.pos += 1
        while self.pos < len(text) and (_name_first(text[self.pos]) or text[self.pos] in _DIGITS):
            self.pos += 1
        return text[start : self.pos]

    def bracketed(self) -> tuple[Selector, ...]:
        self.expect("[")
        self.skip_blank()
        selectors = [self.selector()]
        while True:
            self.skip_blank()
            c = self.peek()
            if c == "]":
                self.pos += 1
                return tuple(selectors)
            if c != ",":
                raise self.error("expected ',' or ']'")
            self.pos += 1
            self.skip_blank()
            selectors.append(self.selector())

    def selector(self) -> Selector:
        c = self.peek()
        if c in ("'", '"'):
            return NameSel(self.string_literal())
        if c == "*":
            self.pos += 1
            return WildcardSel()
        if c == "?":
            self.pos += 1
            self.skip_blank()
            return FilterSel(self.as_logical(self.logical_expr(allow_bare=False)))
        start = self.int_or_none()
        save = self.pos
        self.skip_blank()
        if self.peek() != ":":
            self.pos = save
            if start is None:
                raise self.error("expected a selector")
            return IndexSel(start)
        self.pos += 1
        self.skip_blank()
        stop = self.int_or_none()
        step = None
        save = self.pos
        self.skip_blank()
        if self.peek() == ":":
            self.pos += 1
            self.skip_blank()
            step = self.int_or_none()
        else:
            self.pos = save
        return SliceSel(start, stop, step)

    def int_or_none(self) -> int | None:
        c = self.peek()
        if c != "-" and (c == "" or c not in _DIGITS):
            return None
        start = self.pos
        if c == "-":
            self.pos += 1
        digits_start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _DIGITS:
            self.pos += 1
        digits = self.text[digits_start : self.pos]
        if not digits:
            raise self.error("expected digits", start)
        if digits[0] == "0" and (len(digits) > 1 or c == "-"):
            raise self.error("leading zero or '-0' in integer", start)
        value = int(self.text[start : self.pos])
        if abs(value) > MAX_INT:
            raise self.error("integer out of the I-JSON range", start)
        return value

    # -- string and number literals ------------------------------------------------
    def string_literal(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise self.error("unterminated string")
            c = text[self.pos]
            if c == quote:
                self.pos += 1
                return "".join(out)
            if c == "\\":
                out.append(self.escape(quote))
                continue
            o = ord(c)
            if o < 0x20 or 0xD800 <= o <= 0xDFFF:
                raise self.error("character not allowed in a string literal")
            out.append(c)
            self.pos += 1

    def escape(self, quote: str) -> str:
        self.pos += 1
        c = self.peek()
        if c == quote:
            self.pos += 1
            return c
        if c in _ESCAPES:
            self.pos += 1
            return _ESCAPES[c]
        if c != "u":
            raise self.error("invalid escape")
        self.pos += 1
        code = self.hex4()
        if 0xDC00 <= code <= 0xDFFF:
            raise self.error("lone low surrogate")
        if 0xD800 <= code <= 0xDBFF:
            if self.peek(2) != "\\u":
                raise self.error("high surrogate without a low surrogate")
            self.pos += 2
            low = self.hex4()
            if not 0xDC00 <= low <= 0xDFFF:
                raise self.error("high surrogate without a low surrogate")
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
        return chr(code)

    def hex4(self) -> int:
        h = self.peek(4)
        if len(h) != 4 or any(ch not in _HEX for ch in h):
            raise self.error("expected four hex digits")
        self.pos += 4
        return int(h, 16)

    def number_literal(self) -> Literal:
        start = self.pos
        text = self.text
        if self.peek() == "-":
            self.pos += 1
        digits_start = self.pos
        while self.pos < len(text) and text[self.pos] in _DIGITS:
            self.pos += 1
        digits = text[digits_start : self.pos]
        if not digits or (digits[0] == "0" and len(digits) > 1):
            raise self.error("invalid number", start)
        exact = True
        if self.peek() == ".":
            self.pos += 1
            frac_start = self.pos
            while self.pos < len(text) and text[self.pos] in _DIGITS:
                self.pos += 1
            if self.pos == frac_start:
                raise self.error("invalid number", start)
            exact = False
        if self.peek() in ("e", "E"):
            self.pos += 1
            if self.peek() in ("+", "-"):
                self.pos += 1
            exp_start = self.pos
            while self.pos < len(text) and text[self.pos] in _DIGITS:
                self.pos += 1
            if self.pos == exp_start:
                raise self.error("invalid number", start)
            exact = False
        literal = text[start : self.pos]
        return Literal(int(literal) if exact else Decimal(literal))

    # -- filter expressions --------------------------------------------------------
    def logical_expr(self, allow_bare: bool) -> Expr | _Bare:
        first = self.and_expr(allow_bare)
        items = [first]
        while True:
            save = self.pos
            self.skip_blank()
            if self.peek(2) != "||":
                self.pos = save
                break
            self.pos += 2
            self.skip_blank()
            items.append(self.and_expr(False))
        if len(items) == 1:
            return first
        return Or(tuple(self.as_logical(i) for i in items))

    def and_expr(self, allow_bare: bool) -> Expr | _Bare:
        first = self.basic_expr(allow_bare)
        items = [first]
        while True:
            save = self.pos
            self.skip_blank()
            if self.peek(2) != "&&":
                self.pos = save
                break
            self.pos += 2
            self.skip_blank()
            items.append(self.basic_expr(False))
        if len(items) == 1:
            return first
        return And(tuple(self.as_logical(i) for i in items))

    def as_logical(self, item: Expr | _Bare) -> Expr:
        """Turn a bare comparable into a test expression, or reject it."""
        if not isinstance(item, _Bare):
            return item
        node = item.node
        if isinstance(node, Query):
            return Exists(node)
        if isinstance(node, Call) and node.func.result is not FType.VALUE:
            return LogicalTest(node)
        raise self.error("expected a test or comparison expression")

    def basic_expr(self, allow_bare: bool) -> Expr | _Bare:
        c = self.peek()
        if c == "!":
            self.pos += 1
            self.skip_blank()
            if self.peek() == "(":
                return Not(self.paren_expr())
            start = self.pos
            comparable = self.comparable()
            if isinstance(comparable, Literal):
                raise self.error("a literal is not a test expression", start)
            return Not(self.as_logical(_Bare(comparable)))
        if c == "(":
            return self.paren_expr()
        start = self.pos
        left = self.comparable()
        save = self.pos
        self.skip_blank()
        op = next((o for o in _COMPARE_OPS if self.text.startswith(o, self.pos)), None)
        if op is None:
            self.pos = save
            if allow_bare:
                return _Bare(left)
            if isinstance(left, Literal):
                raise self.error("a literal is not a test expression", start)
            return self.as_logical(_Bare(left))
        self.check_comparable(left, start)
        self.pos += len(op)
        self.skip_blank()
        right_start = self.pos
        right = self.comparable()
        self.check_comparable(right, right_start)
        return Compare(op, left, right)

    def paren_expr(self) -> Expr:
        self.expect("(")
        self.skip_blank()
        inner = self.as_logical(self.logical_expr(False))
        self.skip_blank()
        self.expect(")")
        return inner

    def check_comparable(self, node: Literal | Query | Call, pos: int) -> None:
        if isinstance(node, Query) and not node.singular:
            raise self.error("a comparison needs a singular query", pos)
        if isinstance(node, Call) and node.func.result is not FType.VALUE:
            raise self.error(f"{node.func.name}() does not return a comparable value", pos)

    def comparable(self) -> Literal | Query | Call:
        c = self.peek()
        if c == "@" or c == "$":
            self.pos += 1
            return Query(self.segments(), relative=c == "@")
        if c in ("'", '"'):
            return Literal(self.string_literal())
        if c == "-" or (c != "" and c in _DIGITS):
            return self.number_literal()
        if "a" <= c <= "z":
            start = self.pos
            while self.pos < len(self.text) and (
                "a" <= self.text[self.pos] <= "z"
                or self.text[self.pos] in _DIGITS
                or self.text[self.pos] == "_"
            ):
                self.pos += 1
            name = self.text[start : self.pos]
            if self.peek() == "(":
                return self.call(name, start)
            keywords: dict[str, bool | None] = {"true": True, "false": False, "null": None}
            if name in keywords:
                return Literal(keywords[name])
            raise self.error(f"unknown name {name!r}", start)
        raise self.error("expected a query, literal or function call")

    def call(self, name: str, start: int) -> Call:
        func = self.functions.get(name)
        if func is None:
            raise self.error(f"unknown function {name}()", start)
        self.expect("(")
        self.skip_blank()
        args: list[Expr] = []
        if self.peek() != ")":
            while True:
                arg_start = self.pos
                arg = self.logical_expr(allow_bare=True)
                index = len(args)
                if index >= len(func.params):
                    raise self.error(f"too many arguments to {name}()", arg_start)
                args.append(self.check_arg(func, func.params[index], arg, arg_start))
                self.skip_blank()
                if self.peek() != ",":
                    break
                self.pos += 1
                self.skip_blank()
        self.expect(")")
        if len(args) != len(func.params):
            raise self.error(f"{name}() takes {len(func.params)} argument(s)", start)
        return Call(func, tuple(args))

    def check_arg(self, func: Function, want: FType, arg: Expr | _Bare, pos: int) -> Expr:
        bad = self.error(f"argument of {func.name}() must be {want.value}", pos)
        if want is FType.VALUE:
            if not isinstance(arg, _Bare):
                raise bad
            node = arg.node
            if isinstance(node, Query) and not node.singular:
                raise bad
            if isinstance(node, Call) and node.func.result is not FType.VALUE:
                raise bad
            return node
        if want is FType.NODES:
            if isinstance(arg, _Bare) and isinstance(arg.node, Query):
                return arg.node
            if (
                isinstance(arg, _Bare)
                and isinstance(arg.node, Call)
                and arg.node.func.result is FType.NODES
            ):
                return arg.node
            raise bad
        if isinstance(arg, _Bare):
            if isinstance(arg.node, Literal):
                raise bad
            return self.as_logical(arg)
        return arg
