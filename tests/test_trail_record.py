"""leave_trace's record, exactly: every exchange attribute lands under its own key."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
from aiohttp.test_utils import make_mocked_request

from gateway.audit.record import encode_record
from gateway.exchange import Exchange
from gateway.trail import leave_trace
from gateway.types import Principal

# What the masking plan reports for a teller's read of one customer (rule-file order).
FIELDS = {
    "masked": {"id_number": 1, "bank_card": 4, "credit_limit": 1, "phone": 1, "email": 1},
    "dropped": {"credentials": 2, "balance": 4, "risk_level": 1, "remarks": 1},
    "redacted": {},
    "hashed": {"account_id": 3},
    "revealed": {"name": 1, "customer_no": 1, "business": 12, "envelope": 1},
}
# As gateway.limiting records a decision's usage.
QUOTA: dict[str, dict[str, object]] = {
    "bulk-read": {
        "used": {"records": 201, "distinct": 5},
        "limit": {"records": 500, "distinct": 100},
        "alert": ["records"],
    }
}


class Writer:
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def submit(self, record: Any) -> bool:
        self.lines.append(encode_record(record))
        return True


def exchange(**over: Any) -> Exchange:
    request = make_mocked_request("GET", "/api/customers/1?size=5&b%20c=x&size=6")
    runtime: Any = SimpleNamespace(version="v1-3f2a")
    ex = Exchange(request, runtime, "req-7", started=0.0, client_ip="10.1.2.3")
    ex.wall_start = 1_795_507_262.1234
    ex.route = SimpleNamespace(name="customers", policy="customer")  # type: ignore[assignment]
    ex.path = "/api/customers/1"
    ex.query = "size=5&b%20c=x&size=6"
    for k, v in over.items():
        setattr(ex, k, v)
    return ex


def trace(ex: Exchange, status: int, monkeypatch: Any) -> bytes:
    writer = Writer()
    # A fixed duration: perf_counter() - ex.started.
    monkeypatch.setattr("gateway.trail.time.perf_counter", lambda: ex.started + 0.0123456)
    leave_trace(ex, status, writer)  # type: ignore[arg-type]
    (line,) = writer.lines
    return line


def test_allowed_record_exact(monkeypatch: Any) -> None:
    ex = exchange(
        principal=Principal("alice", 1, "internal", {"department": "retail"}),
        upstream_status=200,
        upstream_ms=3.2171,
        records=2,
        entities=["1", "2"],
        fields=FIELDS,
        quota=QUOTA,
    )
    assert trace(ex, 200, monkeypatch) == (
        b'{"ts":"2026-11-24T08:01:02.123Z","request_id":"req-7","subject":"alice",'
        b'"clearance":"internal","client_ip":"10.1.2.3","method":"GET",'
        b'"path":"/api/customers/1","query_keys":["b c","size"],"route":"customers",'
        b'"policy":"customer","status":200,"upstream_status":200,"decision":"allow",'
        b'"reason":null,"duration_ms":12.35,"upstream_ms":3.22,"records":2,'
        b'"entities":["1","2"],"entities_total":2,"fields":{"masked":{"bank_card":4,'
        b'"credit_limit":1,"email":1,"id_number":1,"phone":1},"dropped":{"balance":4,'
        b'"credentials":2,"remarks":1,"risk_level":1},"redacted":{},'
        b'"hashed":{"account_id":3},"revealed":{"business":12,"customer_no":1,'
        b'"envelope":1,"name":1}},"quota":{"bulk-read":{"used":{"records":201,'
        b'"distinct":5},"limit":{"records":500,"distinct":100},"alert":true}},'
        b'"rules_version":"v1-3f2a"}\n'
    )


def test_refused_record_exact(monkeypatch: Any) -> None:
    # Masking ran, then a quota refused the response: nothing counted as revealed.
    ex = exchange(
        principal=Principal("bob", 2, "confidential"),
        upstream_status=200,
        upstream_ms=1.0,
        records=2,
        entities=["1", "2"],
        fields=FIELDS,
        quota=QUOTA,
        decision="rate_limited",
        reason="quota_exceeded",
    )
    record = orjson.loads(trace(ex, 429, monkeypatch))
    assert (record["records"], record["entities"], record["entities_total"]) == (0, [], 0)
    assert record["fields"] == {k: {} for k in FIELDS}
    assert record["quota"]["bulk-read"]["alert"] is True


def test_denied_record_exact(monkeypatch: Any) -> None:
    ex = exchange(decision="deny_auth", reason="token_missing", path=None, query="")
    assert trace(ex, 401, monkeypatch) == (
        b'{"ts":"2026-11-24T08:01:02.123Z","request_id":"req-7","subject":null,'
        b'"clearance":null,"client_ip":"10.1.2.3","method":"GET",'
        b'"path":"/api/customers/1","query_keys":[],"route":"customers",'
        b'"policy":"customer","status":401,"upstream_status":null,"decision":"deny_auth",'
        b'"reason":"token_missing","duration_ms":12.35,"upstream_ms":null,"records":0,'
        b'"entities":[],"entities_total":0,"fields":{"masked":{},"dropped":{},'
        b'"redacted":{},"hashed":{},"revealed":{}},"quota":{},"rules_version":"v1-3f2a"}\n'
    )
