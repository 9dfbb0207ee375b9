"""Claims -> Principal: clearance claim, roles, the higher of both, lowest by default."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.rules import principal_from_claims

LEVELS = ["public", "internal", "confidential", "secret"]
ROLES = {"risk_officer": "secret", "teller": "confidential", "ghost": "nonexistent"}


@pytest.mark.parametrize(
    ("claims", "level"),
    [
        ({"clearance": "secret"}, "secret"),
        ({"clearance": "Secret"}, "public"),  # level names are case-sensitive
        ({"clearance": 3}, "public"),
        ({}, "public"),
        ({"roles": ["teller"]}, "confidential"),
        ({"roles": "teller"}, "confidential"),
        ({"roles": ["teller", "risk_officer"], "clearance": "internal"}, "secret"),
        ({"roles": ["ghost", 7, None]}, "public"),
        ({"roles": {"teller": True}}, "public"),
        ({"clearance": "secret", "roles": ["teller"]}, "secret"),
    ],
)
def test_levels(claims: dict[str, Any], level: str) -> None:
    p = principal_from_claims(claims, LEVELS, roles_map=ROLES)
    assert (p.level_name, p.level) == (level, LEVELS.index(level))


def test_subject_and_claims() -> None:
    p = principal_from_claims({"sub": "t1", "department": "risk"}, LEVELS)
    assert p.subject == "t1"
    assert p.claims["department"] == "risk"
    assert principal_from_claims({"sub": 5}, LEVELS).subject is None


def test_custom_claim_names() -> None:
    p = principal_from_claims(
        {"lvl": "internal", "grp": ["t"]}, LEVELS, "lvl", "grp", {"t": "secret"}
    )
    assert p.level_name == "secret"
