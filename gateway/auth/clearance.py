"""Verified claims -> :class:`~gateway.types.Principal`.

Rules:

- The clearance claim (default ``clearance``) holds one level name, compared
  case-sensitively: ``Secret`` is not ``secret``.
- The roles claim (default ``roles``) holds a list of role names or one
  space-separated string (OAuth ``scope`` style); each role maps to a level
  through ``auth.clearance.roles``. Non-string entries in a list are ignored.
- The highest level found by either claim wins. Nothing found -> the lowest
  level. A value of the wrong type (number, boolean, list where a string is
  expected, object) counts as nothing found: it lowers, never raises, and never
  crashes the request.
- ``subject`` is ``sub`` when it is a string, else None.
- All verified claims stay in ``Principal.claims`` (read-only) for need-to-know
  conditions.

Compiled once (:meth:`ClearanceResolver.from_config`); resolving is dictionary
lookups only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from gateway.auth.config import ClearanceConfig
from gateway.types import Principal


class ClearanceConfigError(ValueError):
    """``problems`` are (key path below ``auth.``, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))
        self.problems = problems


class ClearanceResolver:
    __slots__ = ("_anonymous", "_level_index", "claim", "levels", "roles", "roles_claim")

    def __init__(
        self,
        levels: Sequence[str],
        *,
        claim: str | None = "clearance",
        roles_claim: str | None = "roles",
        roles: Mapping[str, int] | None = None,
    ) -> None:
        if not levels:
            raise ValueError("at least one level is needed")
        self.levels = tuple(levels)
        self._level_index = {name: i for i, name in enumerate(self.levels)}
        self.claim = claim
        self.roles_claim = roles_claim
        self.roles: Mapping[str, int] = dict(roles or {})
        self._anonymous = Principal(None, 0, self.levels[0], MappingProxyType({}))

    @classmethod
    def from_config(cls, config: ClearanceConfig, levels: Sequence[str]) -> ClearanceResolver:
        """Check role -> level names against the level list; raise ClearanceConfigError."""
        index = {name: i for i, name in enumerate(levels)}
        problems: list[tuple[str, str]] = []
        roles: dict[str, int] = {}
        for role, level in config.roles.items():
            if level in index:
                roles[role] = index[level]
            else:
                problems.append(
                    (
                        f"clearance.roles.{role}",
                        f"unknown level; levels are {', '.join(levels)} (case-sensitive)",
                    )
                )
        if problems:
            raise ClearanceConfigError(problems)
        return cls(levels, claim=config.claim, roles_claim=config.roles_claim, roles=roles)

    def anonymous(self) -> Principal:
        """The caller of an ``auth: none`` route: no subject, lowest level."""
        return self._anonymous

    def level_of(self, claims: Mapping[str, Any]) -> int:
        best = 0
        if self.claim is not None:
            value = claims.get(self.claim)
            if type(value) is str:
                best = self._level_index.get(value, 0)
        if self.roles_claim is not None and self.roles:
            for role in _role_names(claims.get(self.roles_claim)):
                level = self.roles.get(role)
                if level is not None and level > best:
                    best = level
        return best

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        if not isinstance(claims, Mapping):
            return self._anonymous
        level = self.level_of(claims)
        sub = claims.get("sub")
        return Principal(
            subject=sub if type(sub) is str else None,
            level=level,
            level_name=self.levels[level],
            claims=MappingProxyType(dict(claims)),
        )


def _role_names(value: Any) -> list[str]:
    if type(value) is str:
        return value.split()
    if type(value) is list:
        return [v for v in value if type(v) is str]
    return []
