"""Route patterns and the allow-list router (pure: no I/O).

Patterns are absolute paths whose segments are literals, ``*`` (exactly one
segment) or ``**`` (zero or more segments): ``/api/customers/**`` matches
``/api/customers``, ``/api/customers/`` and ``/api/customers/1/accounts``.
Patterns are compiled once; matching walks segments with no regex.

Selection: the first route (file order) whose pattern matches the path and
whose methods allow the request method wins; HEAD is allowed wherever GET is.
When some route matches the path but none allows the method the answer is 405
with the union of their methods; when none matches the path, 404. Routes on a
case-insensitive upstream compare segments case-folded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

_STAR, _GLOBSTAR = "*", "**"


class RoutePatternError(ValueError):
    pass


def compile_pattern(pattern: str) -> tuple[str, ...]:
    """Validate a route pattern and return its segments."""
    if not pattern.startswith("/"):
        raise RoutePatternError("route path must start with '/'")
    segments = tuple(pattern.split("/")[1:])
    if segments == ("",):
        return ()
    for i, seg in enumerate(segments):
        if seg == "" and i != len(segments) - 1:
            raise RoutePatternError("empty segment ('//') in route path")
        if seg in (".", "..") or "%" in seg or "\\" in seg or ";" in seg:
            raise RoutePatternError("route path must be normalised (no '.', '..', '%', ';')")
        if "*" in seg and seg not in (_STAR, _GLOBSTAR):
            raise RoutePatternError("'*' and '**' must be whole segments")
    return segments


def _match(pattern: Sequence[str], path: Sequence[str]) -> bool:
    # Iterative glob matching with one backtrack point per '**' (linear in practice).
    pi = si = 0
    star_pi, star_si = -1, 0
    while si < len(path):
        if pi < len(pattern) and pattern[pi] == _GLOBSTAR:
            star_pi, star_si = pi, si
            pi += 1
        elif pi < len(pattern) and (pattern[pi] == _STAR or pattern[pi] == path[si]):
            pi += 1
            si += 1
        elif star_pi >= 0:
            pi = star_pi + 1
            star_si += 1
            si = star_si
        else:
            return False
    while pi < len(pattern) and pattern[pi] == _GLOBSTAR:
        pi += 1
    return pi == len(pattern)


@dataclass(frozen=True, slots=True)
class CompiledRoute(Generic[T]):
    segments: tuple[str, ...]
    methods: frozenset[str] | None  # None: any method
    case_insensitive: bool
    target: T

    def allows(self, method: str) -> bool:
        if self.methods is None:
            return True
        return method in self.methods or (method == "HEAD" and "GET" in self.methods)

    def allowed_methods(self) -> list[str]:
        if self.methods is None:
            return []
        extra = {"HEAD"} if "GET" in self.methods else set()
        return sorted(self.methods | extra)


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    target: T


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    allow: list[str]


class Router(Generic[T]):
    """Allow-list of routes compiled once; :meth:`resolve` is called per request."""

    def __init__(self, routes: Iterable[CompiledRoute[T]]) -> None:
        self._routes = tuple(
            CompiledRoute(
                tuple(s.casefold() for s in r.segments) if r.case_insensitive else r.segments,
                r.methods,
                r.case_insensitive,
                r.target,
            )
            for r in routes
        )

    @staticmethod
    def route(
        pattern: str, methods: Iterable[str] | None, target: T, *, case_insensitive: bool = False
    ) -> CompiledRoute[T]:
        return CompiledRoute(
            compile_pattern(pattern),
            frozenset(methods) if methods is not None else None,
            case_insensitive,
            target,
        )

    def resolve(self, path: str, method: str) -> Match[T] | MethodNotAllowed | None:
        segments = path.split("/")[1:]
        if segments == [""]:
            segments = []
        folded: list[str] | None = None
        allow: set[str] = set()
        for r in self._routes:
            if r.case_insensitive:
                if folded is None:
                    folded = [s.casefold() for s in segments]
                ok = _match(r.segments, folded)
            else:
                ok = _match(r.segments, segments)
            if not ok:
                continue
            if r.allows(method):
                return Match(r.target)
            allow.update(r.allowed_methods())
        if allow:
            return MethodNotAllowed(sorted(allow))
        return None
