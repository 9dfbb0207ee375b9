"""Exact JSON decoding and encoding for masked responses.

Contract shared by the codec and the masking engine: a decoded document is made
of dict (key order kept), list, str, bool, None, int (when it fits in signed 64
bits and its text is canonical) and :class:`Number` for every other JSON number,
whose original text comes back byte for byte (``100.10``, ``1e5``, ``-0``, a
20-digit account number).

Rules
=====

``decode(body)`` accepts exactly RFC 8259 JSON text, strictly:

* UTF-8 only, strictly (no overlongs, no encoded surrogates, nothing above
  U+10FFFF) -> ``not_utf8``;
* no byte order mark: RFC 8259 §8.1 forbids senders to add one, and guessing
  what a sender meant is not our job on a fail-closed path -> ``bom``;
* an empty or whitespace-only body -> ``empty``;
* the grammar exactly: no trailing garbage or commas, no comments, no
  ``NaN``/``Infinity``, no raw control characters in strings, and no ``\\u``
  escape that leaves a lone surrogate (it cannot be re-encoded as UTF-8)
  -> ``invalid_json``;
* numbers whose magnitude overflows an IEEE double (``1e400``) are rejected too
  (RFC 8259 §9 lets a parser limit the range; the fast parser cannot represent
  them, so both paths refuse them) -> ``invalid_json``;
* nesting deeper than ``max_depth`` containers (``[]`` is depth 1) -> ``too_deep``.
  100 000 nested arrays are refused without ``RecursionError`` or a C stack
  overflow: the fast parser never recurses past its own bound and the
  reference parser turns ``RecursionError`` into ``too_deep``.

Top-level scalars are valid JSON and decode to the scalar.

Duplicate keys: the last one wins. A document is a dict, so the encoded output
holds exactly one member per key, the value the masking engine saw; the first
(unmasked) duplicate cannot come out. This is also what browsers
(``JSON.parse``), Jackson, Go and both our parsers do, so the caller sees the
value a client of the upstream would have used. Rejecting duplicates
(``duplicate_key``) would cost a Python call per object on the exact path and is
impossible to detect on the fast path without walking every object, while
buying no extra safety. The member keeps the position of its first occurrence.

``encode(doc)`` writes compact UTF-8 JSON (non-ASCII as UTF-8, not ``\\u``
escapes), key order preserved, every :class:`Number` as its exact text. It
never raises on a document made by :func:`decode` and then edited with str,
int, Number, None, bool, list and dict values. It raises
``JsonError("unencodable")`` for anything it cannot write faithfully: a
non-str key, a lone surrogate, a ``Number`` whose text is not a JSON number
(which could otherwise inject structure), a cycle, an unknown type.

Theory of operation
===================

``decode`` is *defined* by :func:`_decode_reference`: strict UTF-8 decoding,
then the standard library's C scanner with ``parse_float``/``parse_int`` hooks
that keep number text, then the checks the scanner does not make (lone
surrogates, nesting depth). It is exact by construction, and slow (about
three times orjson). ``decode`` is that function made fast:

1. orjson parses the body wrapped in ``k = L - max_depth`` extra arrays, where
   ``L`` is orjson's own nesting bound (1024, probed at import). orjson thereby
   checks UTF-8, the grammar, surrogates, overflow and the depth limit in one
   pass; the wrappers are peeled off again and each must hold exactly one
   element (so ``1],[2`` cannot pass for two documents).
2. orjson turns every number into an int or a float, which is exact only when
   the document has no float, no int outside signed 64 bits and no ``-0``
   token. A walk over the parsed values looks for the first two; a regular
   expression over the body finds ``-0`` tokens (false positives inside strings
   only cost speed). If all is clear, orjson's document *is* the answer.
3. Otherwise (decimals are common in bank data) the body, already known to be
   valid and within the depth limit, is parsed again by the exact scanner.
4. If orjson refuses the body, the reference decoder runs and names the
   reason, so both paths reject the same bodies for the same reasons. (Where
   orjson is merely stricter than JSON, the reference's answer stands.)

``tests/test_jsoncodec.py`` checks with hypothesis that :func:`decode` and
:func:`_decode_reference` agree on random documents and on random damage to
them: same value, same types, same rejection reason.

``encode`` hands the document to ``orjson.dumps`` with a ``default`` that turns
each ``Number`` into an ``orjson.Fragment`` of its text. orjson refuses a few
documents that are still faithful JSON (nesting past 254, ints beyond 64 bits
put there by an edit); those go through :func:`_encode_fallback`, an iterative
encoder that writes the same bytes orjson would.

Limits
======

``max_depth`` defaults to 256 (``DEFAULT_MAX_DEPTH``): real responses nest a
handful of levels, and a bound keeps the masking engine's walk, the encoder
and any recursive consumer far from stack limits. It may be raised up to
``MAX_SUPPORTED_DEPTH`` (512), which keeps the exact path's C scanner, which
recurses once per level against Python's recursion limit (1000), clear of
``RecursionError`` even when called from a deep stack. The size of the body is
the caller's limit: it is capped when read and when its content coding is
undone (:mod:`gateway.contentcoding`).

Measured speed
==============

On this project's machine (2 cores, shared with other work, so +-10 %), one
1.1 MB response of 2000 customer records (ids, 18-digit id numbers and
19-digit card numbers as strings, names and addresses in Chinese, timestamps
with milliseconds, two nested accounts each), best of 50 runs;
``python -m tests.test_jsoncodec`` prints them:

==============================  =======  =======  =======
document                        decode   encode   total
==============================  =======  =======  =======
ints only (fast path)           6.5 ms   0.5 ms   7.0 ms
6000 decimals (exact path)      11.5 ms  2.3 ms   13.8 ms
==============================  =======  =======  =======

The fast path's decode is orjson (3-4 ms) + the walk for floats and wide ints
(2.7 ms) + the ``-0`` scan (0.35 ms); the reference decoder takes 12 ms.
A sound byte scan instead of the walk (one that rules out floats, exponents,
``-0`` and 19-digit integers outside strings) measured the same or worse: it
takes five passes of the regular-expression engine at ~0.4 ms/MB each (a
single pattern starting with a character class runs at 4-11 ms/MB), and it
refuses more bodies (timestamps, card numbers in strings). The exact path is
orjson's validation pass (3 ms) plus the standard library's scanner (8 ms);
with decimals, encode pays one ``default`` call per Number (~0.2 us each).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

import orjson

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "MAX_SUPPORTED_DEPTH",
    "JsonError",
    "Number",
    "decode",
    "encode",
]


class Number:
    """A JSON number kept as its exact source text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Number({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Number) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


DEFAULT_MAX_DEPTH: Final = 256
MAX_SUPPORTED_DEPTH: Final = 512

# Reasons (metric labels). Messages are fixed text: never a byte of the body.
EMPTY: Final = "empty"
BOM: Final = "bom"
NOT_UTF8: Final = "not_utf8"
INVALID_JSON: Final = "invalid_json"
TOO_DEEP: Final = "too_deep"
UNENCODABLE: Final = "unencodable"

_MESSAGES: Final = {
    EMPTY: "the body is empty",
    BOM: "the body starts with a UTF-8 byte order mark",
    NOT_UTF8: "the body is not valid UTF-8",
    INVALID_JSON: "the body is not valid JSON",
    TOO_DEEP: "the document nests deeper than allowed",
    UNENCODABLE: "the document cannot be written as JSON",
}


class JsonError(ValueError):
    """Decoding or encoding failed; ``reason`` is a short machine-readable label.

    The message never contains document content; ``offset`` (a character index
    into the body, when known) is the only detail given.
    """

    def __init__(self, reason: str, detail: str | None = None, offset: int | None = None) -> None:
        self.reason = reason
        self.offset = offset
        message = _MESSAGES.get(reason, reason)
        if detail:
            message = f"{message}: {detail}"
        if offset is not None:
            message = f"{message} (at character {offset})"
        super().__init__(message)


_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1
_UTF8_BOM: Final = b"\xef\xbb\xbf"
_JSON_WS: Final = " \t\n\r"

# A "-0" number token: "-0" then optional whitespace and what may follow a value.
# ("-0.5" and "-0e1" are floats and are found by the walk.)
_NEG_ZERO_TOKEN: Final = re.compile(rb"-0[ \t\n\r]*(?:[,\]}]|\Z)")
# A \u escape in the surrogate range; only then can a lone surrogate exist.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_NUMBER_PATTERN: Final = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_NUMBER_TEXT: Final = re.compile(_NUMBER_PATTERN)
_NUMBER_LINES: Final = re.compile(rf"(?:{_NUMBER_PATTERN}\n)*")


def _probe_orjson_depth_limit() -> int | None:
    """orjson's nesting bound: the largest n for which n nested arrays parse.

    The fast path's depth check leans on it (see the module docstring), so it is
    measured rather than assumed. ``None`` (bound not found at or below 1024)
    switches the fast path off; a test fails loudly if that ever happens.
    """

    def parses(n: int) -> bool:
        try:
            orjson.loads(b"[" * n + b"]" * n)
        except orjson.JSONDecodeError:
            return False
        return True

    if parses(1024):
        # Never probe deeper than orjson's documented bound: an unbounded
        # parser could overflow the C stack on a deeper probe.
        return None if parses(1025) else 1024
    lo, hi = 0, 1024  # parses(lo) is True, parses(hi) is False
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if parses(mid) else (lo, mid)
    return lo


_ORJSON_DEPTH_LIMIT: Final = _probe_orjson_depth_limit()
_OPEN: Final = b"[" * (_ORJSON_DEPTH_LIMIT or 0)
_CLOSE: Final = b"]" * (_ORJSON_DEPTH_LIMIT or 0)


def _check_max_depth(max_depth: int) -> None:
    if not 1 <= max_depth <= MAX_SUPPORTED_DEPTH:
        raise ValueError(f"max_depth must be between 1 and {MAX_SUPPORTED_DEPTH}")


def decode(body: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse one JSON text exactly; raise :class:`JsonError` if it is not acceptable.

    See the module docstring for what is accepted and how numbers come back.
    """
    _check_max_depth(max_depth)
    if not body:
        raise JsonError(EMPTY)
    if body.startswith(_UTF8_BOM):
        raise JsonError(BOM)
    if _ORJSON_DEPTH_LIMIT is None:
        return _decode_reference(body, max_depth)
    k = max(_ORJSON_DEPTH_LIMIT - max_depth, 0)
    try:
        doc = orjson.loads(_OPEN[:k] + body + _CLOSE[:k])
    except orjson.JSONDecodeError:
        # The reference names the reason (or, where orjson is only stricter
        # than JSON, returns the document).
        return _decode_reference(body, max_depth)
    for _ in range(k):
        if type(doc) is not list or len(doc) != 1:
            return _decode_reference(body, max_depth)
        doc = doc[0]
    if not _has_inexact_number(doc) and _NEG_ZERO_TOKEN.search(body) is None:
        return doc
    del doc  # free orjson's objects before building the exact ones (measurably faster)
    # Valid, within the depth limit, no lone surrogate (orjson checked all of
    # that); only the numbers need their text.
    return _parse_exact(body.decode("utf-8"), validated=True)


def _has_inexact_number(doc: Any) -> bool:
    """True if orjson's document holds a float or an int outside signed 64 bits.

    Ordered by frequency: strings first. Stops at the first hit, so a document
    with decimals costs almost nothing here before the exact path takes over.
    """
    t = type(doc)
    if t is float:
        return True
    if t is int:
        return not _I64_MIN <= doc <= _I64_MAX
    if t is not dict and t is not list:
        return False
    stack: list[Any] = [doc]
    pop = stack.pop
    push = stack.append
    while stack:
        node = pop()
        for v in node.values() if type(node) is dict else node:
            t = type(v)
            if t is str:
                continue
            if t is int:
                if not _I64_MIN <= v <= _I64_MAX:
                    return True
            elif t is dict or t is list:
                push(v)
            elif t is float:
                return True
    return False


class _OutOfRange(ValueError):
    """A number that overflows an IEEE double (orjson cannot hold it either)."""


class _Constant(ValueError):
    """NaN, Infinity or -Infinity: not JSON."""


def _parse_int(text: str) -> int | Number:
    n = len(text)
    if n < 19:  # at most 18 digits: always within signed 64 bits
        return Number(text) if text == "-0" else int(text)
    if n <= 20:
        v = int(text)
        return v if _I64_MIN <= v <= _I64_MAX else Number(text)
    # Cheap guard first: only a 309+ digit integer can overflow a double.
    if n > 309 and math.isinf(float(text)):
        raise _OutOfRange
    return Number(text)


def _parse_float(text: str) -> Number:
    # Without an exponent only a 309+ digit integer part can overflow.
    if (len(text) > 308 or "e" in text or "E" in text) and math.isinf(float(text)):
        raise _OutOfRange
    return Number(text)


def _reject_constant(text: str) -> Any:
    raise _Constant


_EXACT_DECODER: Final = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_reject_constant
)
# After orjson has accepted the body no number can overflow, so floats go
# straight to the Number constructor (a C-level call per float, not two
# Python ones).
_EXACT_DECODER_VALIDATED: Final = json.JSONDecoder(
    parse_float=Number, parse_int=_parse_int, parse_constant=_reject_constant
)


def _parse_exact(text: str, *, validated: bool = False) -> Any:
    """The standard library's C scanner with number text kept; grammar errors -> JsonError."""
    decoder = _EXACT_DECODER_VALIDATED if validated else _EXACT_DECODER
    try:
        return decoder.decode(text)
    except RecursionError:
        raise JsonError(TOO_DEEP) from None
    except json.JSONDecodeError as exc:
        raise JsonError(INVALID_JSON, offset=exc.pos) from None
    except _OutOfRange:
        raise JsonError(INVALID_JSON, "number out of range") from None
    except _Constant:
        raise JsonError(INVALID_JSON, "NaN or Infinity") from None


def _decode_reference(body: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The definition of :func:`decode`: exact by construction, and slow."""
    _check_max_depth(max_depth)
    if not body:
        raise JsonError(EMPTY)
    if body.startswith(_UTF8_BOM):
        raise JsonError(BOM)
    try:
        text = body.decode("utf-8")  # strict
    except UnicodeDecodeError as exc:
        raise JsonError(NOT_UTF8, offset=exc.start) from None
    if not text.strip(_JSON_WS):
        raise JsonError(EMPTY)
    doc = _parse_exact(text)
    if _depth_exceeds(doc, max_depth):
        raise JsonError(TOO_DEEP)
    if _SURROGATE_ESCAPE.search(text) is not None and _has_lone_surrogate(doc):
        raise JsonError(INVALID_JSON, "lone surrogate escape")
    return doc


def _depth_exceeds(doc: Any, max_depth: int) -> bool:
    """Level by level, so no recursion and no per-value tuples."""
    level: list[Any] = [doc]
    depth = 0
    while True:
        containers = [v for v in level if type(v) is dict or type(v) is list]
        if not containers:
            return False
        depth += 1
        if depth > max_depth:
            return True
        level = []
        for c in containers:
            level.extend(c.values() if type(c) is dict else c)


def _has_lone_surrogate(doc: Any) -> bool:
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if type(node) is str:
            strings: list[str] = [node]
        elif type(node) is dict:
            strings = list(node)
            stack.extend(node.values())
        elif type(node) is list:
            strings = []
            stack.extend(node)
        else:
            continue
        for s in strings:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def encode(doc: Any) -> bytes:
    """Compact UTF-8 JSON, key order kept, ``Number`` as its exact text."""
    texts: list[str] = []
    keep = texts.append

    def fragment(obj: Any) -> orjson.Fragment:
        # orjson's ``default``: a Number becomes its own text. The texts are
        # checked after the dump in one regular-expression pass rather than one
        # call per Number (a third of the encode time with decimals).
        if isinstance(obj, Number):
            text = obj.text
            keep(text)
            return orjson.Fragment(text)
        raise TypeError  # orjson wraps it in JSONEncodeError

    try:
        out = orjson.dumps(doc, default=fragment)
    except orjson.JSONEncodeError:
        # Nesting past orjson's bound, an int beyond 64 bits, or a real problem
        # that the fallback reports as JsonError.
        return _encode_fallback(doc)
    if texts and not _all_number_texts(texts):
        return _encode_fallback(doc)  # raises, naming the bad Number
    return out


def _all_number_texts(texts: list[str]) -> bool:
    """True if every text is a JSON number (so a Number can never inject structure)."""
    if not all(type(t) is str for t in texts):
        return False
    joined = "\n".join(texts)
    # A text holding the separator could pass as two numbers: count them.
    return joined.count("\n") == len(texts) - 1 and (
        _NUMBER_LINES.fullmatch(joined + "\n") is not None
    )


def _encode_scalar(v: Any) -> bytes:
    if isinstance(v, str):
        try:
            return orjson.dumps(v)  # the same escaping as the fast path
        except orjson.JSONEncodeError:
            raise JsonError(UNENCODABLE, "string is not valid unicode") from None
    if v is None:
        return b"null"
    if v is True:
        return b"true"
    if v is False:
        return b"false"
    if isinstance(v, int):
        try:
            return int.__repr__(v).encode()
        except ValueError:  # beyond sys.get_int_max_str_digits()
            raise JsonError(UNENCODABLE, "integer too long") from None
    if isinstance(v, Number):
        text = v.text
        if type(text) is str and _NUMBER_TEXT.fullmatch(text) is not None:
            return text.encode()
        raise JsonError(UNENCODABLE, "Number text is not a JSON number")
    if isinstance(v, float):
        return orjson.dumps(v)
    raise JsonError(UNENCODABLE, f"unsupported type {type(v).__name__}")


_END: Final[Any] = object()


def _encode_fallback(doc: Any) -> bytes:
    """Iterative encoder: no nesting limit, arbitrary ints, same bytes as orjson."""
    out: list[bytes] = []
    # Each frame: (iterator over items or elements, is_dict, id of the container).
    stack: list[tuple[Any, bool, int]] = []
    active: set[int] = set()  # containers being written: a repeat is a cycle
    value: Any = doc
    while True:
        is_dict = isinstance(value, dict)
        if is_dict or isinstance(value, list | tuple):
            ident = id(value)
            if ident in active:
                raise JsonError(UNENCODABLE, "the document contains a cycle")
            active.add(ident)
            out.append(b"{" if is_dict else b"[")
            stack.append((iter(value.items()) if is_dict else iter(value), is_dict, ident))
            first = True
        else:
            out.append(_encode_scalar(value))
            first = False
        # Find the next value to write, closing finished containers.
        while stack:
            it, is_dict, ident = stack[-1]
            item: Any = next(it, _END)
            if item is _END:
                stack.pop()
                active.discard(ident)
                out.append(b"}" if is_dict else b"]")
                first = False
                continue
            if not first:
                out.append(b",")
            if is_dict:
                key, value = item
                if not isinstance(key, str):
                    raise JsonError(UNENCODABLE, "object key is not a string")
                out.append(_encode_scalar(key))
                out.append(b":")
            else:
                value = item
            break
        else:
            return b"".join(out)
