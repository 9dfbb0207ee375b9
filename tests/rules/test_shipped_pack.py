"""The shipped rule pack (rules/): its own test cases pass, and demo data never leaks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.explain import to_json_text
from gateway.rules import RuleSet, load_rules, principal_from_claims
from gateway.rules.bench import customers
from gateway.ruletest import case_files, load_cases, run_cases

RULES = Path(__file__).parents[2] / "rules"
LEVELS = ["public", "internal", "confidential", "secret"]


@pytest.fixture(scope="module")
def pack() -> RuleSet:
    return load_rules(RULES, hash_key=b"shipped-pack-test")


def test_shipped_cases_pass(pack: RuleSet) -> None:
    cases = [c for f in case_files(RULES) for c in load_cases(f)]
    assert len(cases) >= 9
    results = run_cases(pack, cases, {"customers": "customer"})
    assert [r.report() for r in results if not r.passed] == []


CUSTOMERS = customers(60, seed=11)


@settings(max_examples=60, deadline=None)
@given(
    index=st.integers(0, len(CUSTOMERS) - 1),
    level=st.sampled_from(LEVELS),
    department=st.sampled_from([None, "risk", "ops"]),
)
def test_demo_customers_never_leak(index: int, level: str, department: str | None) -> None:
    pack = load_rules(RULES, hash_key=b"k")
    customer = CUSTOMERS[index]
    claims: dict[str, Any] = {"clearance": level}
    if department:
        claims["department"] = department
    plan = pack.plan("customer", principal_from_claims(claims, LEVELS))
    out = plan.apply({"data": [copy.deepcopy(customer)], "page": 1, "size": 1, "total": 1})
    text = to_json_text(out.document)
    for secret in (customer["txn_password"], customer["password"]):
        assert secret not in text  # C3: nobody
    if level != "secret":
        # Including inside the remarks, where staff typed them.
        for secret in (
            customer["phone"],
            customer["id_number"],
            customer["bank_card"],
            customer["address"],
            *(a["number"] for a in customer["accounts"]),
        ):
            assert secret not in text
        assert customer["birth_date"] not in text
    if level in ("public", "internal"):
        assert "remarks" not in out.document["data"][0]
        assert "balance" not in text
    if not (level == "secret" and department == "risk"):
        assert customer["balance"].text not in text
    assert out.records.ids == (str(customer["id"]),)


def test_level_views_of_one_customer(pack: RuleSet) -> None:
    customer = CUSTOMERS[0]
    views = {}
    for level in LEVELS:
        doc = {"data": copy.deepcopy(customer)}
        views[level] = (
            pack.plan("customer", principal_from_claims({"clearance": level}, LEVELS))
            .apply(doc)
            .document["data"]
        )
    assert set(views["public"]) == {"id", "customer_no", "name"}
    assert views["public"]["customer_no"].startswith("h:")
    assert set(views["internal"]) == {
        "id",
        "customer_no",
        "name",
        "gender",
        "birth_date",
        "id_number",
        "phone",
        "email",
        "address",
        "bank_card",
        "credit_limit",
        "branch",
        "accounts",
        "created_at",
    }
    assert set(views["confidential"]) == set(views["internal"]) | {
        "balance",
        "risk_level",
        "remarks",
    }
    assert views["secret"]["phone"] == customer["phone"]
    assert views["secret"]["remarks"] == customer["remarks"]
    assert list(views["secret"]) == [k for k in customer if k not in ("password", "txn_password")]
