"""The audit record: exact shape, ts format, query keys, entity cap, refused responses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.record import (
    DECISIONS,
    FIELD_COUNTERS,
    KEYS,
    build_record,
    encode_record,
    format_ts,
)

TS = datetime(2026, 11, 24, 8, 1, 2, 123000, tzinfo=UTC).timestamp()


def base(**over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        ts=TS,
        request_id="req-1",
        subject="t1",
        clearance="confidential",
        client_ip="10.1.2.3",
        method="GET",
        path="/api/customers/42",
        query="size=10&b=1&size=20&a%20b=x",
        route="customers",
        policy="customer",
        status=200,
        upstream_status=200,
        decision="allow",
        reason=None,
        duration_ms=12.3456,
        upstream_ms=8.004,
        records=2,
        entities=["42", 43],
        fields={
            "masked": {"phone": 2, "id_number": 2},
            "dropped": {"txn_password": 2, "balance": 0},
            "revealed": {"email": 1},
        },
        quota={"bulk-read": {"used": 2, "limit": 500, "alert": False}},
        rules_version="v1-abc",
    )
    fields.update(over)
    return fields


def test_full_record_exact() -> None:
    record = build_record(**base())
    assert record == {
        "ts": "2026-11-24T08:01:02.123Z",
        "request_id": "req-1",
        "subject": "t1",
        "clearance": "confidential",
        "client_ip": "10.1.2.3",
        "method": "GET",
        "path": "/api/customers/42",
        "query_keys": ["a b", "b", "size"],
        "route": "customers",
        "policy": "customer",
        "status": 200,
        "upstream_status": 200,
        "decision": "allow",
        "reason": None,
        "duration_ms": 12.35,
        "upstream_ms": 8.0,
        "records": 2,
        "entities": ["42", "43"],
        "entities_total": 2,
        "fields": {
            "masked": {"id_number": 2, "phone": 2},
            "dropped": {"txn_password": 2},
            "redacted": {},
            "hashed": {},
            "revealed": {"email": 1},
        },
        "quota": {"bulk-read": {"used": 2, "limit": 500, "alert": False}},
        "rules_version": "v1-abc",
    }
    assert list(record) == list(KEYS)
    assert list(record["fields"]) == ["masked", "dropped", "redacted", "hashed", "revealed"]


def test_encode_is_one_json_line_in_key_order() -> None:
    line = encode_record(build_record(**base()))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert list(orjson.loads(line)) == list(KEYS)


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (TS, "2026-11-24T08:01:02.123Z"),
        (1.9996, "1970-01-01T00:00:02.000Z"),  # rounds into the next second
        (1_700_000_000.5, "2023-11-14T22:13:20.500Z"),
    ],
)
def test_ts_is_rfc3339_utc_millis(epoch: float, text: str) -> None:
    assert format_ts(epoch) == text


def reference_ts(epoch: float) -> str:
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=round(epoch * 1000))
    return at.strftime("%Y-%m-%dT%H:%M:%S") + f".{at.microsecond // 1000:03d}Z"


def test_ts_of_each_second_across_boundaries() -> None:
    # format_ts keeps the last second's text: each call must still get its own second,
    # across a boundary, when rounding carries into the next second, and going back.
    base = 1_700_000_000
    cases = [
        (base + 0.999, "2023-11-14T22:13:20.999Z"),
        (base + 0.9996, "2023-11-14T22:13:21.000Z"),
        (base + 1.0, "2023-11-14T22:13:21.000Z"),
        (base + 1.5, "2023-11-14T22:13:21.500Z"),
        (base + 0.25, "2023-11-14T22:13:20.250Z"),
        (base + 1.001, "2023-11-14T22:13:21.001Z"),
        (base - 86_400.5, "2023-11-13T22:13:19.500Z"),
        (base + 1.002, "2023-11-14T22:13:21.002Z"),
    ]
    assert [format_ts(epoch) for epoch, _ in cases] == [text for _, text in cases]


@given(st.lists(st.floats(min_value=0, max_value=4_102_444_800), min_size=1, max_size=20))
def test_ts_matches_a_calendar_computation(epochs: list[float]) -> None:
    for epoch in epochs:
        assert format_ts(epoch) == reference_ts(epoch)


def test_unknown_subject_is_null_and_path_has_no_query() -> None:
    r = build_record(**base(subject=None, path="/api/customers?id=1", query=""))
    assert r["subject"] is None
    assert r["path"] == "/api/customers"
    assert r["query_keys"] == []


def test_entities_capped_with_total() -> None:
    ids = [str(i) for i in range(250)]
    r = build_record(**base(entities=ids, records=250))
    assert r["entities"] == ids[:100]
    assert r["entities_total"] == 250
    r = build_record(**base(entities=ids, entities_cap=3))
    assert r["entities"] == ["0", "1", "2"]


@pytest.mark.parametrize("kind", [list, tuple, iter])
@pytest.mark.parametrize("cap", [-1, 0, 2, 5, 100])
def test_entities_from_any_iterable(kind: Any, cap: int) -> None:
    # Lists and tuples take a shortcut (only the kept ids are converted): same record.
    ids: list[str | int] = ["7", 8, "9", 10, "11"]
    r = build_record(**base(entities=kind(ids), entities_cap=cap))
    assert r["entities"] == ["7", "8", "9", "10", "11"][: max(cap, 0)]
    assert r["entities_total"] == 5


def reference_fields(counts: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, int]]:
    """The record's field counters as first written (sort each counter's rules per record)."""
    out: dict[str, dict[str, int]] = {c: {} for c in FIELD_COUNTERS}
    for counter, by_rule in (counts or {}).items():
        out[counter] = {rule: int(n) for rule, n in sorted(by_rule.items()) if n}
    return out


RULES = st.sampled_from(["phone", "email", "id_number", "bank_card", "name", "a", "b", "Z"])
COUNTS = st.one_of(st.integers(min_value=0, max_value=10**6), st.booleans(), st.just(2.0))


@given(st.dictionaries(st.sampled_from(FIELD_COUNTERS), st.dictionaries(RULES, COUNTS)))
def test_field_counters_sorted_by_rule_whatever_the_order_given(
    counts: dict[str, dict[str, Any]],
) -> None:
    # Rule order is remembered per rule sequence: the same names in another order, zero
    # counts and non-int counts must still give exactly what sorting every time gave.
    for _ in range(2):  # the second time from the remembered order
        r = build_record(**base(fields=counts))
        assert orjson.dumps(r["fields"]) == orjson.dumps(reference_fields(counts))
        assert list(r["fields"]) == list(FIELD_COUNTERS)


@pytest.mark.parametrize("decision", sorted(DECISIONS - {"allow"}))
def test_refused_response_has_no_records_entities_or_field_counts(decision: str) -> None:
    r = build_record(**base(decision=decision, reason="x", status=429))
    assert r["records"] == 0
    assert r["entities"] == [] and r["entities_total"] == 0
    assert r["fields"] == {k: {} for k in ("masked", "dropped", "redacted", "hashed", "revealed")}
    assert r["quota"] == {"bulk-read": {"used": 2, "limit": 500, "alert": False}}


def test_unknown_decision_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="decision"):
        build_record(**base(decision="denied"))


def test_unknown_field_counter_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="counter"):
        build_record(**base(fields={"shown": {"phone": 1}}))


def test_no_upstream() -> None:
    r = build_record(**base(upstream_status=None, upstream_ms=None, decision="deny_auth"))
    assert r["upstream_status"] is None and r["upstream_ms"] is None


def test_remembered_rule_orders_are_bounded() -> None:
    from gateway.audit import record

    for i in range(record._SORTED_RULES_MAX + 10):
        r = build_record(**base(fields={"masked": {f"r{i}": 1, "a": 2}}))
        assert r["fields"]["masked"] == {"a": 2, f"r{i}": 1}
    assert len(record._sorted_rules) <= record._SORTED_RULES_MAX


def test_full_record_json_line_exact() -> None:
    # The bytes every sink receives, pinned: key order, number formats, nested order.
    assert encode_record(build_record(**base())) == (
        b'{"ts":"2026-11-24T08:01:02.123Z","request_id":"req-1","subject":"t1",'
        b'"clearance":"confidential","client_ip":"10.1.2.3","method":"GET",'
        b'"path":"/api/customers/42","query_keys":["a b","b","size"],"route":"customers",'
        b'"policy":"customer","status":200,"upstream_status":200,"decision":"allow",'
        b'"reason":null,"duration_ms":12.35,"upstream_ms":8.0,"records":2,'
        b'"entities":["42","43"],"entities_total":2,"fields":{"masked":{"id_number":2,'
        b'"phone":2},"dropped":{"txn_password":2},"redacted":{},"hashed":{},'
        b'"revealed":{"email":1}},"quota":{"bulk-read":{"used":2,"limit":500,'
        b'"alert":false}},"rules_version":"v1-abc"}\n'
    )


# build_record's parameters, in order (what gateway.trail passes by position).
POSITIONAL = (*KEYS[:7], "query", *KEYS[8:18], "fields", "quota", "rules_version")


@pytest.mark.parametrize(
    "over",
    [{}, {"decision": "rate_limited", "reason": "quota_exceeded"}, {"fields": None, "quota": None}],
)
@pytest.mark.parametrize("cap", [1, 100])
def test_by_position_is_by_keyword(over: dict[str, Any], cap: int) -> None:
    kw = base(**over)
    args = [kw[name] for name in POSITIONAL]
    by_position = build_record(*args, cap)
    assert by_position == build_record(**kw, entities_cap=cap)
    assert encode_record(by_position) == encode_record(build_record(**kw, entities_cap=cap))
