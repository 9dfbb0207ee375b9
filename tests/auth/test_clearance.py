"""Claims -> Principal: the resolution table and hostile claim shapes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.clearance import ClearanceConfigError, ClearanceResolver
from gateway.auth.config import ClearanceConfig

LEVELS = ["public", "internal", "confidential", "secret"]


@pytest.fixture
def resolver() -> ClearanceResolver:
    config = ClearanceConfig(
        roles={"risk_officer": "secret", "teller": "confidential", "clerk": "internal"}
    )
    return ClearanceResolver.from_config(config, LEVELS)


@pytest.mark.parametrize(
    ("claims", "level"),
    [
        ({}, "public"),
        ({"clearance": "confidential"}, "confidential"),
        ({"roles": ["teller"]}, "confidential"),
        ({"roles": "clerk risk_officer"}, "secret"),  # space-separated string
        ({"clearance": "internal", "roles": ["risk_officer"]}, "secret"),  # both -> higher
        ({"clearance": "secret", "roles": ["clerk"]}, "secret"),
        ({"clearance": "top-secret"}, "public"),  # unknown level
        ({"clearance": "Secret"}, "public"),  # case-sensitive
        ({"clearance": "SECRET", "roles": ["teller"]}, "confidential"),
        ({"roles": ["Risk_Officer"]}, "public"),
        ({"roles": ["unknown", "teller"]}, "confidential"),
        ({"clearance": 3}, "public"),
        ({"clearance": True}, "public"),
        ({"clearance": ["secret"]}, "public"),  # list where a string is expected
        ({"clearance": {"level": "secret"}}, "public"),
        ({"clearance": None}, "public"),
        ({"roles": {"risk_officer": True}}, "public"),
        ({"roles": 7}, "public"),
        ({"roles": [["risk_officer"], 1, None, "clerk"]}, "internal"),  # non-strings ignored
        ({"roles": ""}, "public"),
    ],
)
def test_resolution_table(resolver: ClearanceResolver, claims: dict[str, Any], level: str) -> None:
    p = resolver.principal(claims)
    assert p.level_name == level and p.level == LEVELS.index(level)


@pytest.mark.parametrize(
    ("sub", "expected"), [("u1", "u1"), (1, None), (None, None), (["u"], None)]
)
def test_subject_is_a_string_or_none(resolver: ClearanceResolver, sub: Any, expected: Any) -> None:
    assert resolver.principal({"sub": sub}).subject == expected


def test_claims_are_kept_read_only(resolver: ClearanceResolver) -> None:
    p = resolver.principal({"sub": "u", "department": "risk"})
    assert p.claims["department"] == "risk"
    with pytest.raises(TypeError):
        p.claims["department"] = "x"  # type: ignore[index]


def test_claim_names_are_configurable() -> None:
    config = ClearanceConfig(claim="lvl", roles_claim="groups", roles={"ops": "secret"})
    r = ClearanceResolver.from_config(config, LEVELS)
    assert r.principal({"lvl": "internal"}).level_name == "internal"
    assert r.principal({"groups": ["ops"], "clearance": "public"}).level_name == "secret"
    off = ClearanceResolver.from_config(ClearanceConfig(claim=None, roles_claim=None), LEVELS)
    assert off.principal({"clearance": "secret", "roles": ["x"]}).level_name == "public"


def test_unknown_role_level_is_a_config_error() -> None:
    config = ClearanceConfig(roles={"teller": "Confidential", "x": "secret"})
    with pytest.raises(ClearanceConfigError) as info:
        ClearanceResolver.from_config(config, LEVELS)
    assert [k for k, _ in info.value.problems] == ["clearance.roles.teller"]


def test_anonymous_and_no_levels(resolver: ClearanceResolver) -> None:
    a = resolver.anonymous()
    assert (a.subject, a.level, a.level_name, dict(a.claims)) == (None, 0, "public", {})
    with pytest.raises(ValueError):
        ClearanceResolver([])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["clearance", "roles", "sub", "x"]) | st.text(max_size=5), json_values
    )
)
def test_any_claims_resolve_without_crashing(claims: dict[str, Any]) -> None:
    config = ClearanceConfig(roles={"risk_officer": "secret", "teller": "confidential"})
    p = ClearanceResolver.from_config(config, LEVELS).principal(claims)
    assert 0 <= p.level < len(LEVELS) and p.level_name == LEVELS[p.level]
    assert p.subject is None or isinstance(p.subject, str)
