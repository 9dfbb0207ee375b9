"""Query strings: the parameter names for the audit trail, and the page-size clamp (pure).

The gateway forwards the caller's query string untouched except where a route
clamps a page size, so a single request cannot pull a whole customer table.
Ambiguity is refused rather than guessed: a page-size parameter that appears
twice (frameworks disagree on which copy wins, so the upstream might read
another one than the gateway checked) or that is not a plain non-negative
integer is an error.
"""

from __future__ import annotations

from urllib.parse import unquote_plus


class QueryError(ValueError):
    """The query is ambiguous; the message names the parameter, never its value."""


def query_keys(query: str) -> list[str]:
    """Parameter names, decoded, sorted and deduplicated (values never leave here)."""
    if not query:
        return []
    names = {part.partition("=")[0] for part in query.split("&") if part}
    # Decoding is needed only where there is something to decode (once per record in the
    # audit trail; most queries are plain names).
    if "%" in query or "+" in query:
        names = {unquote_plus(name) for name in names}
    return sorted(names)


def clamp_page_size(query: str, param: str, maximum: int) -> str:
    """Rewrite ``param`` to at most ``maximum``; absent stays absent (the upstream default
    applies, and the gateway cannot know it: routes that need a bound on the default
    should also be covered by a quota)."""
    parts = query.split("&") if query else []
    found = [i for i, p in enumerate(parts) if unquote_plus(p.partition("=")[0]) == param]
    if not found:
        return query
    if len(found) > 1:
        raise QueryError(f"query parameter '{param}' is given more than once")
    i = found[0]
    value = unquote_plus(parts[i].partition("=")[2])
    if not value.isascii() or not value.isdigit():
        raise QueryError(f"query parameter '{param}' must be a non-negative integer")
    if int(value) > maximum:
        parts[i] = f"{parts[i].partition('=')[0]}={maximum}"
    return "&".join(parts)
