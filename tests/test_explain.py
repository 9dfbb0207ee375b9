"""gateway explain: the masked response plus, per touched value, rule, action and reason."""

from __future__ import annotations

from pathlib import Path

from gateway.explain import explain, render_text, to_json_text
from gateway.jsoncodec import Number
from gateway.rules import load_rules, principal_from_claims

LEVELS = ["public", "internal", "confidential", "secret"]
RULES = Path(__file__).parents[1] / "rules"


def test_explain_a_teller_view() -> None:
    rs = load_rules(RULES, hash_key=b"k")
    doc = {"data": [{"id": 1, "phone": "13812345678", "password": "x", "balance": Number("5.10")}]}
    who = principal_from_claims({"sub": "t1", "clearance": "confidential"}, LEVELS)
    result = explain(rs, "customer", who, doc)
    assert doc["data"][0]["password"] == "x"  # the caller's document is not modified
    assert result.document == {"data": [{"id": 1, "phone": "138****5678", "balance": Number("0")}]}
    assert [(f.location, f.rule, f.action, f.reason) for f in result.fields] == [
        ("$['data'][0]['id']", "envelope", "clear", "clearance confidential >= public"),
        (
            "$['data'][0]['phone']",
            "phone",
            "mask cn_phone",
            "clearance confidential < secret; entry for confidential",
        ),
        ("$['data'][0]['password']", "credentials", "drop", "level never"),
        (
            "$['data'][0]['balance']",
            "balance",
            "round step=10000",
            "clearance confidential < secret; entry for confidential",
        ),
    ]
    assert result.records.ids == ("1",)
    text = render_text(result)
    assert text.startswith(
        "policy customer, clearance confidential (subject t1)\nrecords: 1 (ids: 1)\n"
    )
    assert '"phone": "138****5678"' in text
    assert "4 field value(s) touched:" in text
    assert "  $['data'][0]['password']  credentials  drop              level never\n" in text
    assert text.rstrip().endswith("clearance confidential < secret; entry for confidential")


def test_need_to_know_reason() -> None:
    rs = load_rules(RULES, hash_key=b"k")
    who = principal_from_claims({"clearance": "secret", "department": "ops"}, LEVELS)
    result = explain(rs, "customer", who, {"data": {"id": 1, "balance": 12}})
    assert result.fields[1].reason == (
        "need_to_know: department not in [risk, credit]; entry for confidential"
    )


def test_nothing_touched_and_anonymous() -> None:
    rs = load_rules(RULES, hash_key=b"k")
    result = explain(rs, "customer", None, {})
    assert render_text(result) == (
        "policy customer, clearance public (anonymous)\nrecords: 0\n\n{}\n\nno field was touched\n"
    )


def test_json_text_keeps_numbers_order_and_unicode() -> None:
    value = {"b": Number("100.10"), "a": ["张三", True, None, Number("1e400")], "e": {}, "f": []}
    assert to_json_text(value, indent=None) == (
        '{"b": 100.10, "a": ["张三", true, null, 1e400], "e": {}, "f": []}'
    )
    assert to_json_text(value) == (
        '{\n  "b": 100.10,\n  "a": [\n    "张三",\n    true,\n    null,\n    1e400\n  ],\n'
        '  "e": {},\n  "f": []\n}'
    )
