"""I-Regexp (RFC 9485) to Python ``re`` translation for ``match()``/``search()``.

I-Regexp is a small, portable regex dialect: literals, ``.``, character classes
(with ``\\p{..}``/``\\P{..}`` Unicode categories), groups, alternation and the
quantifiers ``* + ? {n} {n,} {n,m}``. Anything else (``\\d``, back-references,
lookaround, inline flags) is not I-Regexp: :func:`translate` returns ``None``
and the calling function yields LogicalFalse, as RFC 9535 requires.

Translation rules:

* ``.`` matches any character except LF and CR -> ``[^\\n\\r]``;
* ``^`` and ``$`` act as anchors, matching the compliance suite (``$`` becomes
  ``\\Z`` so a trailing newline is not special);
* ``\\p{Lu}`` etc. expand into explicit code point ranges computed once per
  category from :mod:`unicodedata` (Python's ``re`` lacks ``\\p``);
* groups become non-capturing.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache

_META = set("()*+.?[\\]{|}")
_SINGLE_ESC = set("()*+-.?[\\]^{|}nrt")
_ESC_CHARS = {"n": "\n", "r": "\r", "t": "\t"}
_CATEGORIES = {
    "L": "lmotu",
    "M": "cen",
    "N": "dlo",
    "P": "cdefios",
    "Z": "lps",
    "S": "ckmo",
    "C": "cfno",
}
Ranges = tuple[tuple[int, int], ...]


@lru_cache(maxsize=64)
def _category_ranges(cat: str) -> Ranges:
    out: list[tuple[int, int]] = []
    start = -1
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp)).startswith(cat):
            if start < 0:
                start = cp
        elif start >= 0:
            out.append((start, cp - 1))
            start = -1
    if start >= 0:
        out.append((start, sys.maxunicode))
    return tuple(out)


def _complement(ranges: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    prev = 0
    for lo, hi in ranges:
        if lo > prev:
            out.append((prev, lo - 1))
        prev = hi + 1
    if prev <= sys.maxunicode:
        out.append((prev, sys.maxunicode))
    return tuple(out)


def _class_text(ranges: Ranges) -> str:
    parts = []
    for lo, hi in ranges:
        parts.append(
            re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        )
    return "".join(parts)


class _Invalid(Exception):
    pass


class _Translator:
    def __init__(self, text: str) -> None:
        self.t = text
        self.i = 0

    def peek(self) -> str:
        return self.t[self.i] if self.i < len(self.t) else ""

    def take(self) -> str:
        c = self.peek()
        if not c:
            raise _Invalid
        self.i += 1
        return c

    def regexp(self) -> str:
        branches = [self.branch()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.branch())
        return "|".join(branches)

    def branch(self) -> str:
        out = []
        while self.peek() not in ("", "|", ")"):
            out.append(self.piece())
        return "".join(out)

    def piece(self) -> str:
        atom = self.atom()
        c = self.peek()
        if c in ("*", "+", "?"):
            self.i += 1
            return atom + c
        if c == "{":
            self.i += 1
            lo = self.digits()
            hi: str | None = lo
            if self.peek() == ",":
                self.i += 1
                hi = self.digits() if self.peek() != "}" else ""
            if self.take() != "}":
                raise _Invalid
            if hi and int(hi) < int(lo):
                raise _Invalid
            return atom + ("{" + lo + "}" if hi == lo else "{" + lo + "," + (hi or "") + "}")
        return atom

    def digits(self) -> str:
        start = self.i
        while self.peek().isascii() and self.peek().isdigit():
            self.i += 1
        if self.i == start:
            raise _Invalid
        return self.t[start : self.i]

    def atom(self) -> str:
        c = self.take()
        if c == "(":
            inner = self.regexp()
            if self.take() != ")":
                raise _Invalid
            return f"(?:{inner})"
        if c == ".":
            return "[^\\n\\r]"
        if c == "^":
            return "^"
        if c == "$":
            return "\\Z"
        if c == "[":
            return self.char_class()
        if c == "\\":
            ranges = self.class_escape()
            if ranges is not None:
                return f"[{_class_text(ranges)}]"
            return re.escape(self.single_escape())
        if c in _META:
            raise _Invalid
        if 0xD800 <= ord(c) <= 0xDFFF:
            raise _Invalid
        return re.escape(c)

    def single_escape(self) -> str:
        c = self.take()
        if c not in _SINGLE_ESC:
            raise _Invalid
        return _ESC_CHARS.get(c, c)

    def class_escape(self) -> Ranges | None:
        """``\\p{..}`` or ``\\P{..}`` after the backslash; None for other escapes."""
        c = self.peek()
        if c not in ("p", "P"):
            return None
        self.i += 1
        if self.take() != "{":
            raise _Invalid
        major = self.take()
        minor = ""
        if self.peek() != "}":
            minor = self.take()
        if self.take() != "}" or major not in _CATEGORIES:
            raise _Invalid
        if minor and minor not in _CATEGORIES[major]:
            raise _Invalid
        ranges = _category_ranges(major + minor)
        return _complement(ranges) if c == "P" else ranges

    def class_char(self) -> str:
        c = self.take()
        if c == "\\":
            return self.single_escape()
        if c in ("[", "]", "-") or 0xD800 <= ord(c) <= 0xDFFF:
            raise _Invalid
        return c

    def char_class(self) -> str:
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        items: list[tuple[int, int]] = []
        first = True
        while True:
            c = self.peek()
            after = self.t[self.i + 1 : self.i + 2]
            if c == "]" and not first:
                self.i += 1
                break
            if c == "-":
                if not (first or after == "]"):
                    raise _Invalid
                self.i += 1
                items.append((ord("-"), ord("-")))
                first = False
                continue
            first = False
            if c == "\\" and after in ("p", "P"):
                self.i += 1
                ranges = self.class_escape()
                assert ranges is not None
                items.extend(ranges)
                continue
            lo = self.class_char()
            hi = lo
            if self.peek() == "-" and self.t[self.i + 1 : self.i + 2] not in ("]", ""):
                self.i += 1
                hi = self.class_char()
                if ord(hi) < ord(lo):
                    raise _Invalid
            items.append((ord(lo), ord(hi)))
        return ("[^" if negate else "[") + _class_text(tuple(items)) + "]"


@lru_cache(maxsize=256)
def translate(pattern: str) -> re.Pattern[str] | None:
    """Compile an I-Regexp, or None when it is not valid I-Regexp."""
    tr = _Translator(pattern)
    try:
        text = tr.regexp()
        if tr.i != len(pattern):
            return None
        return re.compile(text)
    except (_Invalid, re.error, OverflowError):
        return None
