"""Shared value types and aiohttp state keys, defined once (see STYLE.md habit 1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as resolved by authentication.

    ``level`` is the index of the caller's clearance in the ordered level list
    (0 = lowest); ``level_name`` its name. ``claims`` are the verified token
    claims, used for need-to-know conditions. An anonymous caller (route with
    ``auth: none``) has ``subject=None`` and the lowest level.
    """

    subject: str | None
    level: int
    level_name: str
    claims: Mapping[str, Any] = field(default_factory=dict)
