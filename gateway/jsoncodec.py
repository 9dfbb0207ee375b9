"""Exact JSON decoding and encoding for masked responses (placeholder: see Number).

Contract shared by the codec and the masking engine: a decoded document is made
of dict (key order kept), list, str, bool, None, int (when it fits in 64 bits
and its text is canonical) and :class:`Number` for every other JSON number, whose
original text must come back byte for byte (``100.10``, ``1e5``, a 20-digit
account number).
"""

from __future__ import annotations


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
