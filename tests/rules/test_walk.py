"""The reference walker: traces, general-path hits and their interplay with the automaton."""

from __future__ import annotations

from gateway.jsonpath import format_location

from .conftest import RuleDir, caller, policy_yaml, ruleset_of


def test_trace_lists_every_touched_value_in_document_order(rule_dir: RuleDir) -> None:
    rules = policy_yaml(
        '  - {name: phone, paths: ["$..phone"], level: secret, action: {mask: cn_phone}}\n'
        '  - {name: vip, paths: ["$.data[?@.vip == true]"], level: confidential}\n'
        '  - {name: id, paths: ["$.data[*].id"], level: public}\n'
    )
    rs = ruleset_of(rule_dir({"p.yaml": rules}))
    doc = {"data": [{"id": 1, "phone": "13812345678"}, {"id": 2, "vip": True, "phone": "1"}]}
    result = rs.plan("p", caller("internal")).trace(doc)
    assert [
        (format_location(t.location), t.outcome.rule, t.outcome.action) for t in result.touched
    ] == [
        ("$['data'][0]['id']", "id", "clear"),
        ("$['data'][0]['phone']", "phone", "mask cn_phone"),
        ("$['data'][1]", "vip", "drop"),
    ]
    assert result.document == {"data": [{"id": 1, "phone": "138****5678"}]}


def test_general_hits_inside_automaton_subtrees(rule_dir: RuleDir) -> None:
    rules = policy_yaml(
        '  - {name: names, paths: ["$..name"], level: secret, action: {mask: cn_name}}\n'
        '  - {name: big, paths: ["$..accounts[?@.balance > 1000].balance"], level: secret,'
        " action: {round: {step: 1000}}}\n"
        '  - {name: last, paths: ["$.list[-2:]"], level: secret, action: redact}\n'
    )
    rs = ruleset_of(rule_dir({"p.yaml": rules}))
    doc = {
        "name": "张三",
        "c": {"accounts": [{"balance": 1500, "name": "李四"}, {"balance": 20}]},
        "list": [1, 2, 3],
    }
    result = rs.plan("p", caller("public")).apply(doc)
    assert result.document == {
        "name": "张*",
        "c": {"accounts": [{"balance": 1000, "name": "李*"}, {"balance": 20}]},
        "list": [1, "[REDACTED]", "[REDACTED]"],
    }
    assert result.fields["masked"] == {"names": 2, "big": 1}
    assert result.fields["redacted"] == {"last": 2}


def test_filters_see_the_upstream_values(rule_dir: RuleDir) -> None:
    """Filters are evaluated on the document as sent, before any rule changes it."""
    rules = policy_yaml(
        '  - {name: vip, paths: ["$.data[*].vip"], level: secret, action: drop}\n'
        '  - {name: vipname, paths: ["$.data[?@.vip].name"], level: secret, action: redact}\n'
    )
    rs = ruleset_of(rule_dir({"p.yaml": rules}))
    doc = {"data": [{"vip": True, "name": "a"}, {"name": "b"}]}
    assert rs.plan("p", None).apply(doc).document == {
        "data": [{"name": "[REDACTED]"}, {"name": "b"}]
    }


def test_documents_as_deep_as_the_codec_allows(rule_dir: RuleDir) -> None:
    rules = policy_yaml(
        '  - {name: phone, paths: ["$..phone"], level: secret, action: {mask: cn_phone}}\n'
        '  - {name: deep, paths: ["$..[?@.flag == true]"], level: secret, action: redact}\n'
    )
    rs = ruleset_of(rule_dir({"p.yaml": rules}))
    plan = rs.plan("p", caller("public"))

    def nest(depth: int, flag: bool) -> object:
        doc: object = {"phone": "13812345678", "flag": flag}
        for i in range(depth - 1):
            doc = [doc] if i % 2 else {"x": doc}
        return doc

    def leaf(doc: object) -> object:
        while isinstance(doc, list) or (isinstance(doc, dict) and "x" in doc):
            doc = doc[0] if isinstance(doc, list) else doc["x"]
        return doc

    fast = plan.apply(nest(256, False)).document  # no filter match: the fast path
    reference = plan.trace(nest(256, False)).document
    assert leaf(fast) == leaf(reference) == {"phone": "138****5678", "flag": False}
    assert plan.apply(nest(256, True)).document is not None
    assert "[REDACTED]" in str(plan.apply(nest(3, True)).document)
