"""Claims -> :class:`Principal`, minimal and pure (used by ``gateway test``/``explain``).

The clearance is the higher of the ``clearance_claim`` (a level name, exact
case) and the levels that ``roles_map`` gives the caller's roles; anything
unknown or malformed counts for nothing, and a caller with nothing resolvable
gets the lowest level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.types import Principal


def principal_from_claims(
    claims: Mapping[str, Any],
    levels: Sequence[str],
    clearance_claim: str = "clearance",
    roles_claim: str = "roles",
    roles_map: Mapping[str, str] | None = None,
) -> Principal:
    level = 0
    direct = claims.get(clearance_claim)
    if isinstance(direct, str) and direct in levels:
        level = levels.index(direct)
    roles = claims.get(roles_claim)
    if isinstance(roles, str):
        roles = [roles]
    if isinstance(roles, list | tuple) and roles_map:
        for role in roles:
            mapped = roles_map.get(role) if isinstance(role, str) else None
            if mapped is not None and mapped in levels:
                level = max(level, levels.index(mapped))
    sub = claims.get("sub")
    return Principal(sub if isinstance(sub, str) else None, level, levels[level], dict(claims))
