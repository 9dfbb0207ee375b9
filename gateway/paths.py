"""Request-target normalisation: one canonical path, decided before routing.

The gateway matches routes on, and forwards, the same normalised path, so an
upstream can never be handed a path that means something else than what was
authorised. Theory of operation, in order:

1. Only origin-form targets (``/path?query``) are accepted; absolute-form,
   authority-form, ``*`` and fragments are refused.
2. The query is split off at the first ``?`` and forwarded untouched.
3. The path must be printable ASCII; a raw backslash is refused (IIS and some
   Java containers treat it as ``/``).
4. Percent-escapes are validated. Unreserved characters (RFC 3986 2.3) are
   decoded, so ``%2e%2E`` is seen as ``..``; every other escape is kept,
   upper-cased. Refused: ``%2F`` and ``%5C`` (an encoded separator is read as a
   separator by some upstreams and not by others), ``%00``, malformed escapes,
   and double encoding (``%25`` followed by two hex digits), which an upstream
   that decodes twice would turn into any of the above.
5. ``;`` in the path is refused: Tomcat and other Java containers strip
   ``;params`` per segment, so ``/public/..;/customers`` would reach a route
   the gateway never matched.
6. Empty segments (duplicate slashes) collapse; ``.`` segments vanish; ``..``
   removes the previous segment, and a ``..`` that would climb above the root is
   refused rather than clamped (it is never an honest request).

Any refusal raises :class:`PathError`; the caller answers 400.
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# Visible ASCII minus characters that cannot appear raw in a path.
_BAD_RAW = re.compile(r'[^\x21-\x7e]|[\\"<>^`{|}#]')
_REFUSED_ESCAPES = {"2F": "encoded slash", "5C": "encoded backslash", "00": "encoded NUL"}


class PathError(ValueError):
    """The request target is ambiguous or malformed; ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _normalise_escapes(path: str) -> str:
    if "%" not in path:
        return path
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        hexpair = path[i + 1 : i + 3]
        if len(hexpair) != 2 or not set(hexpair) <= _HEX:
            raise PathError("malformed percent-encoding")
        hexpair = hexpair.upper()
        if hexpair in _REFUSED_ESCAPES:
            raise PathError(_REFUSED_ESCAPES[hexpair])
        if hexpair == "25" and len(path) >= i + 5 and set(path[i + 3 : i + 5]) <= _HEX:
            raise PathError("double percent-encoding")
        ch = chr(int(hexpair, 16))
        out.append(ch if ch in _UNRESERVED else "%" + hexpair)
        i += 3
    return "".join(out)


def normalise_path(path: str) -> str:
    """Normalise the path part of a request target (see the module rules)."""
    if not path.startswith("/"):
        raise PathError("request target must be an absolute path")
    if _BAD_RAW.search(path):
        raise PathError("backslash" if "\\" in path else "invalid character in path")
    if ";" in path:
        raise PathError("path parameters (';') are not accepted")
    path = _normalise_escapes(path)
    segments: list[str] = []
    raw = path.split("/")[1:]
    for seg in raw:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not segments:
                raise PathError("path climbs above the root")
            segments.pop()
            continue
        segments.append(seg)
    # A trailing slash (or trailing dot segment) is kept: /a/ and /a may differ upstream.
    trailing = bool(raw) and raw[-1] in ("", ".", "..") and bool(segments)
    return "/" + "/".join(segments) + ("/" if trailing else "")


def split_target(target: str) -> tuple[str, str]:
    """Split an origin-form request target into (normalised path, raw query)."""
    if "#" in target:
        raise PathError("fragment in request target")
    path, sep, query = target.partition("?")
    return normalise_path(path), query if sep else ""
