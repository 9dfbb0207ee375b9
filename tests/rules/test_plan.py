"""Plans applied to documents: exact masked documents, counts and records."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.jsoncodec import Number
from gateway.rules import MARKER, RuleSet

from .conftest import RuleDir, caller, policy_yaml, ruleset_of


def fields(**counts: dict[str, int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {
        c: {} for c in ("masked", "dropped", "redacted", "hashed", "revealed")
    }
    out.update(counts)
    return out


CUSTOMER: dict[str, Any] = {
    "data": [
        {
            "id": 1,
            "customer_no": "C1500080636",
            "phone": "13812345678",
            "email": "zhangsan@example.com",
            "id_number": "11010119900307123X",
            "balance": Number("674649.00"),
            "password": "x",
            "accounts": [{"number": "6222021234567890123", "balance": Number("100.10")}],
            "note": "备注 \u2028 unchanged",
        }
    ],
    "total": Number("1e0"),
}


def test_product_policy_teller(product_rules: RuleSet) -> None:
    doc = copy.deepcopy(CUSTOMER)
    result = product_rules.plan("customer", caller("confidential")).apply(doc)
    assert result.document == {
        "data": [
            {
                "id": 1,
                "customer_no": result.document["data"][0]["customer_no"],
                "phone": "138****5678",
                "email": "zhangsan@example.com",
                "id_number": "110101********123X",
                "accounts": [{"number": "622202*********0123"}],
                "note": "备注 \u2028 unchanged",
            }
        ],
        "total": Number("1e0"),
    }
    assert result.document["data"][0]["customer_no"].startswith("h:")
    assert list(result.document["data"][0]) == [
        "id",
        "customer_no",
        "phone",
        "email",
        "id_number",
        "accounts",
        "note",
    ]
    assert result.fields == fields(
        masked={"id_number": 1, "bank_card": 1, "phone": 1},
        dropped={"txn_password": 1, "balance": 2},
        hashed={"customer_ref": 1},
        revealed={"email": 1},
    )
    assert (result.records.count, result.records.ids) == (1, ("1",))
    assert result.document is doc  # masked in place


def test_product_policy_risk_officer_with_need_to_know(product_rules: RuleSet) -> None:
    doc = copy.deepcopy(CUSTOMER)
    result = product_rules.plan("customer", caller("secret", department="risk")).apply(doc)
    expected = copy.deepcopy(CUSTOMER)
    del expected["data"][0]["password"]
    assert result.document == expected
    assert result.document["data"][0]["balance"].text == "674649.00"
    assert result.fields["revealed"] == {
        "customer_ref": 1,
        "phone": 1,
        "email": 1,
        "id_number": 1,
        "balance": 2,
        "bank_card": 1,
    }


def test_product_policy_public_and_anonymous(product_rules: RuleSet) -> None:
    for who in (caller("public"), None, caller("no-such-level")):
        doc = copy.deepcopy(CUSTOMER)
        out = product_rules.plan("customer", who).apply(doc).document
        record = out["data"][0]
        assert "phone" not in record  # below every per-level entry: drop
        assert record["email"] == "z*******@example.com"
        assert record["id_number"] == "110101********123X"


def test_unselected_values_are_the_same_objects(product_rules: RuleSet) -> None:
    doc = copy.deepcopy(CUSTOMER)
    note, total = doc["data"][0]["note"], doc["total"]
    out = product_rules.plan("customer", caller("internal")).apply(doc).document
    assert out["data"][0]["note"] is note
    assert out["total"] is total


def test_drop_removes_array_elements_by_upstream_position(rule_dir: RuleDir) -> None:
    rules = policy_yaml(
        '  - {name: second, paths: ["$.a[1]", "$.a[-1]"], level: secret}\n'
        '  - {name: vip, paths: ["$.b[?@.vip]"], level: secret}\n'
        '  - {name: tail, paths: ["$.c[2:]"], level: secret, action: redact}\n'
    )
    rs = ruleset_of(rule_dir({"p.yaml": rules}))
    doc = {"a": [0, 1, 2, 3], "b": [{"vip": 1}, {"x": 1}, {"vip": 2}], "c": [0, 1, 2, 3]}
    result = rs.plan("p", caller("internal")).apply(doc)
    assert result.document == {"a": [0, 2], "b": [{"x": 1}], "c": [0, 1, MARKER, MARKER]}
    assert result.fields == fields(dropped={"second": 2, "vip": 2}, redacted={"tail": 2})


def test_stronger_action_wins_when_paths_overlap(rule_dir: RuleDir) -> None:
    rules = policy_yaml(
        '  - {name: masked, paths: ["$..number"], level: secret, action: {mask: bank_card}}\n'
        '  - {name: hidden, paths: ["$..accounts[*].number"], level: secret, action: redact}\n'
        '  - {name: listed, paths: ["$..accounts"], level: internal}\n'
    )
    rs = ruleset_of(rule_dir({"p.yaml": rules}))
    doc = {"number": "6222021234567890123", "accounts": [{"number": "6222021234567890123"}]}
    result = rs.plan("p", caller("internal")).apply(doc)
    assert result.document == {"number": "622202*********0123", "accounts": [{"number": MARKER}]}
    assert result.fields == fields(
        masked={"masked": 1}, redacted={"hidden": 1}, revealed={"listed": 1}
    )


def test_transformed_containers_are_not_walked(rule_dir: RuleDir) -> None:
    rules = policy_yaml(
        '  - {name: acc, paths: ["$.accounts"], level: secret, action: redact}\n'
        '  - {name: num, paths: ["$..number"], level: secret, action: drop}\n'
    )
    rs = ruleset_of(rule_dir({"p.yaml": rules}))
    result = rs.plan("p", caller("public")).apply({"accounts": [{"number": "1"}], "number": 2})
    assert result.document == {"accounts": MARKER}
    assert result.fields == fields(redacted={"acc": 1}, dropped={"num": 1})


def test_root_selection(rule_dir: RuleDir) -> None:
    rs = ruleset_of(
        rule_dir({"p.yaml": policy_yaml('  - {name: all, paths: ["$"], level: secret}\n')})
    )
    assert rs.plan("p", caller("public")).apply({"a": 1}).document is None
    assert rs.plan("p", caller("secret")).apply({"a": 1}).document == {"a": 1}


def test_allow_list_mode(rule_dir: RuleDir) -> None:
    rules = policy_yaml(
        '  - {name: ids, paths: ["$.data[*].id", "$.total"], level: public}\n'
        '  - {name: phone, paths: ["$..phone"], level: secret,'
        " action: {internal: {mask: cn_phone}}}\n"
        '  - {name: meta, paths: ["$.meta"], level: internal}\n',
        unlisted="drop",
    )
    rs = ruleset_of(rule_dir({"p.yaml": rules}))
    doc = {
        "data": [
            {"id": 1, "phone": "13812345678", "secret": "s", "nested": {"x": 1, "phone": "1"}},
            {"id": 2, "nested": {"y": 2}},
        ],
        "meta": {"anything": {"goes": True}, "phone": "13812345678"},
        "debug": {"sql": "select"},
        "empty": [],
        "total": 2,
    }
    result = rs.plan("p", caller("internal")).apply(doc)
    assert result.document == {
        "data": [
            {"id": 1, "phone": "138****5678", "nested": {"phone": "*"}},
            {"id": 2},
        ],
        "meta": {"anything": {"goes": True}, "phone": "138****5678"},
        "empty": [],
        "total": 2,
    }
    assert result.fields == fields(
        masked={"phone": 3},
        dropped={"(unlisted)": 4},
        revealed={"ids": 3, "meta": 1},
    )


def test_allow_list_root_is_kept_even_when_empty(rule_dir: RuleDir) -> None:
    rs = ruleset_of(
        rule_dir(
            {
                "p.yaml": policy_yaml(
                    '  - {name: a, paths: ["$..a"], level: public}\n', unlisted="drop"
                )
            }
        )
    )
    assert rs.plan("p", None).apply({"b": 1}).document == {}
    assert rs.plan("p", None).apply([1, 2]).document == []
    assert rs.plan("p", None).apply("scalar").document is None


@pytest.mark.parametrize("value", ["x", 1, Number("1.5"), True, None, [1], {"k": "v"}])
def test_every_type_under_every_action_never_crashes(rule_dir: RuleDir, value: Any) -> None:
    rules = policy_yaml(
        '  - {name: k, paths: ["$.k"], level: secret, action: keep}\n'
        '  - {name: d, paths: ["$.d"], level: secret, action: drop}\n'
        '  - {name: r, paths: ["$.r"], level: secret, action: redact}\n'
        '  - {name: m, paths: ["$.m"], level: secret, action: {mask: cn_phone}}\n'
        '  - {name: h, paths: ["$.h"], level: secret, action: hash}\n'
        '  - {name: o, paths: ["$.o"], level: secret, action: {round: 1}}\n'
    )
    rs = ruleset_of(rule_dir({"p.yaml": rules}))
    doc = {k: copy.deepcopy(value) for k in "kdrmho"}
    out = rs.plan("p", None).apply(doc).document
    assert set(out) == set("kdrmho") - {"d"}
    assert out["k"] == value and out["r"] == MARKER


def test_records_override_and_no_records(product_rules: RuleSet) -> None:
    from gateway.rules import compile_records

    plan = product_rules.plan("customer", caller("secret"))
    single = plan.apply({"data": {"id": "C9"}}, records=compile_records("$.data", "id"))
    assert (single.records.count, single.records.ids) == (1, ("C9",))
    assert plan.apply({"other": 1}).records.count == 0
    with pytest.raises(ValueError, match="invalid JSONPath"):
        compile_records("$.data[", "id")


def test_non_json_values_fail_closed(product_rules: RuleSet) -> None:
    plan = product_rules.plan("customer", caller("internal"))
    with pytest.raises(TypeError):
        plan.apply({"data": [{"phone": "1", "x": ({"phone": "1"},)}]})
