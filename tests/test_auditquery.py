"""``gateway audit``: query the audit trail (files with backups, redis streams)."""

from __future__ import annotations

import asyncio
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.audit.record import build_record, encode_record, format_ts
from gateway.audit.sinks import RedisStreamSink
from gateway.auditquery import (
    Collector,
    Filter,
    clean,
    matches,
    parse_record,
    parse_time,
    read_file_lines,
    read_stream,
    redact_url,
    summarize,
    with_backups,
)
from gateway.cli import main
from tests.conftest import RedisServer

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC).timestamp()  # 2026-11-24T08:00:00Z


def rec(
    minute: float,
    subject: str | None = "alice",
    *,
    route: str = "customers",
    decision: str = "allow",
    entities: tuple[str, ...] = (),
    total: int | None = None,
    revealed: dict[str, int] | None = None,
    path: str = "/customers",
    rid: str | None = None,
) -> dict[str, Any]:
    """A record ``minute`` minutes after T0; ``total`` > len(entities) caps the list."""
    ids = list(entities)
    cap = len(ids)
    if total is not None:
        ids += [f"x{i}" for i in range(total - len(ids))]
    return build_record(
        ts=T0 + minute * 60,
        request_id=rid or f"r-{minute}-{subject}",
        subject=subject,
        clearance="confidential",
        client_ip="10.0.0.1",
        method="GET",
        path=path,
        query="page=2",
        route=route,
        policy="customer",
        status=200 if decision == "allow" else 403,
        upstream_status=200 if decision == "allow" else None,
        decision=decision,
        reason=None if decision == "allow" else "policy",
        duration_ms=3.0,
        upstream_ms=2.0 if decision == "allow" else None,
        records=len(ids),
        entities=ids,
        fields={"revealed": revealed or {}, "masked": {"cn_id": len(ids)}},
        entities_cap=cap if total is not None else 100,
    )


def write(path: Path, records: list[dict[str, Any]], extra: bytes = b"") -> None:
    path.write_bytes(b"".join(encode_record(r) for r in records) + extra)


# --- pure core --------------------------------------------------------------------------


def test_parse_time() -> None:
    assert parse_time("2026-11-24") == datetime(2026, 11, 24, tzinfo=UTC)
    assert parse_time("2026-11-24T09:30:00+01:00") == datetime(2026, 11, 24, 8, 30, tzinfo=UTC)
    assert parse_time("2026-11-24T08:01:02.123Z") == datetime(
        2026, 11, 24, 8, 1, 2, 123000, tzinfo=UTC
    )
    for bad in ("2026-11-24T08:00:00", "yesterday", "2026-13-01", "2026-11-24T25:00:00Z", ""):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_filter_validates() -> None:
    with pytest.raises(ValueError, match="unknown decision"):
        Filter(decision="denied")
    with pytest.raises(ValueError, match="before"):
        Filter(since=parse_time("2026-11-25"), until=parse_time("2026-11-24"))


def test_matches_customer_yes_maybe_no() -> None:
    listed = rec(0, entities=("42", "43"))
    capped = rec(1, entities=("7",), total=150)  # 149 ids not listed
    other = rec(2, entities=("7",))
    refused = rec(3, decision="deny_policy", entities=("42",))
    f = Filter(customer="42")
    assert matches(listed, f) == "yes"
    assert matches(capped, f) == "maybe"
    assert matches(other, f) == "no"
    assert matches(refused, f) == "no"  # a refusal delivered no customer data
    assert matches(capped, Filter(customer="7")) == "yes"
    assert matches(capped, Filter(customer="42", subject="bob")) == "no"


def test_matches_time_bounds_inclusive_exclusive() -> None:
    f = Filter(since=parse_time("2026-11-24T08:01:00Z"), until=parse_time("2026-11-24T08:03:00Z"))
    assert [matches(rec(m), f) for m in (0, 0.999, 1, 2, 2.99, 3, 4)] == [
        "no",
        "no",
        "yes",
        "yes",
        "yes",
        "no",
        "no",
    ]


def test_summarize_subject_numbers() -> None:
    records = [
        rec(0, entities=("1", "2"), revealed={"phone_clear": 2}),
        rec(1, entities=("2", "3", "4"), revealed={"phone_clear": 3, "email_clear": 1}),
        rec(2, route="accounts", entities=("5",), total=3),  # capped: 2 ids unlisted
        rec(3, decision="deny_policy", entities=("9",)),
        rec(4, decision="rate_limited"),
        rec(5, subject="bob", entities=("1",), revealed={"phone_clear": 9}),
    ]
    s = summarize(records, Filter(subject="alice"))
    assert s["requests"] == 5
    assert s["subject"] == {
        "subject": "alice",
        "requests": 5,
        "records": 2 + 3 + 3,
        "customers": 5,  # 1..5 (capped request: a lower bound)
        "customers_capped_requests": 1,
        "routes": [{"route": "customers", "times": 4}, {"route": "accounts", "times": 1}],
        "decisions": {"allow": 3, "deny_policy": 1, "rate_limited": 1},
        "revealed": {"email_clear": 1, "phone_clear": 5},
    }


def test_summarize_customer_per_subject() -> None:
    records = [
        rec(0, "alice", entities=("42",)),
        rec(1, "bob", entities=("42", "1")),
        rec(2, "alice", entities=("42",)),
        rec(3, "carol", entities=("1",), total=500),
        rec(4, "dave", entities=("1",)),
    ]
    s = summarize(records, Filter(customer="42"))
    assert (s["requests"], s["possible"]) == (3, 1)
    assert s["customer"] == {
        "id": "42",
        "received_by": [{"subject": "alice", "times": 2}, {"subject": "bob", "times": 1}],
        "possibly_received_by": [{"subject": "carol", "times": 1}],
    }


def test_parse_record_rejects_non_records() -> None:
    good = encode_record(rec(0))
    assert parse_record(good) is not None
    for bad in (b"{not json", b"[1,2]", b'{"ts": "now"}', b"\xff\xfe", good[:-10]):
        assert parse_record(bad) is None
    broken = rec(0)
    broken["entities"] = [1, 2]
    assert parse_record(json.dumps(broken).encode()) is None


def test_collector_counts_unreadable_and_merges_duplicates() -> None:
    c = Collector(Filter(subject="alice"))
    r = encode_record(rec(0, entities=("1",)))
    for line in (r, b"garbage secret=hunter2", b"", r, encode_record(rec(1, "bob"))):
        c.feed("a", line.rstrip(b"\n"))
    c.feed("b", r.rstrip(b"\n"))
    doc = c.result()
    assert doc["unreadable"] == 1
    assert doc["duplicates"] == 2
    assert len(doc["matches"]) == 1
    assert doc["sources"] == [
        {"source": "a", "lines": 4, "unreadable": 1},
        {"source": "b", "lines": 1, "unreadable": 0},
    ]
    assert "hunter2" not in json.dumps(doc)


def test_backups_oldest_first_and_gzip(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, [rec(3)])
    write(tmp_path / "audit.jsonl.1", [rec(2)])
    write(tmp_path / "audit.jsonl.10", [rec(0)])
    (tmp_path / "audit.jsonl.2.gz").write_bytes(gzip.compress(encode_record(rec(1))))
    (tmp_path / "audit.jsonl.bak").write_text("not a backup")
    (tmp_path / "other.jsonl.1").write_text("not ours")
    paths = with_backups(live)
    assert [p.name for p in paths] == [
        "audit.jsonl.10",
        "audit.jsonl.2.gz",
        "audit.jsonl.1",
        "audit.jsonl",
    ]
    ts = [json.loads(line)["ts"] for line in read_file_lines(paths)]
    assert ts == [format_ts(T0 + m * 60) for m in range(4)]


def test_clean_escapes_terminal_controls() -> None:
    assert clean("/customers/1") == "/customers/1"
    assert clean("/a\x1b[2Jb\u202e") == "/a\\x1b[2Jb\\u202e"
    assert clean(None) == "-"


def test_redact_url() -> None:
    assert redact_url("redis://:s3cret@db:6380/0") == "redis://:***@db:6380/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


# --- CLI: files -----------------------------------------------------------------------


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """gateway.yaml with a rotating file sink: a backup, the live file, one broken line."""
    (tmp_path / "gateway.yaml").write_text(
        "upstreams: {legacy: {url: 'http://127.0.0.1:9'}}\n"
        "routes: [{name: customers, path: /customers, upstream: legacy, auth: none}]\n"
        "audit: [stdout, {file: logs/audit.jsonl, max_bytes: 1MiB, backups: 3}]\n"
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    write(
        logs / "audit.jsonl.1",
        [
            rec(0, "alice", entities=("42", "43"), revealed={"phone_clear": 2}),
            rec(1, "bob", entities=("44",), total=120),  # capped: 42 may be among them
        ],
    )
    write(
        logs / "audit.jsonl",
        [
            rec(2, "carol", entities=("42",), path="/customers/42"),
            rec(3, "alice", decision="deny_policy", entities=("42",)),
            rec(4, "alice", entities=("45",), revealed={"phone_clear": 1}),
        ],
        extra=b'{"ts": "2026-11-24T08:05:00.000Z", "password": "hunter2"\n',
    )
    return tmp_path / "gateway.yaml"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["audit", *argv, "--format", "json"]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def test_cli_customer_from_config(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, "-c", str(trail), "--customer", "42")
    assert [(r["subject"], r["ts"]) for r in doc["matches"]] == [
        ("alice", format_ts(T0)),
        ("carol", format_ts(T0 + 120)),
    ]
    assert [r["subject"] for r in doc["possible"]] == ["bob"]
    assert doc["summary"]["customer"]["received_by"] == [
        {"subject": "alice", "times": 1},
        {"subject": "carol", "times": 1},
    ]
    assert doc["summary"]["customer"]["possibly_received_by"] == [{"subject": "bob", "times": 1}]
    assert doc["unreadable"] == 1
    assert [s["source"].rsplit("/", 1)[1] for s in doc["sources"]] == [
        "audit.jsonl.1",
        "audit.jsonl",
    ]


def test_cli_customer_table(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "-c", str(trail), "--customer", "42"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["TS", "SUBJECT", "ROUTE", "DECISION", "STATUS", "RECORDS", "PATH"]
    assert lines[1].split() == [
        format_ts(T0),
        "alice",
        "customers",
        "allow",
        "200",
        "2",
        "/customers",
    ]
    assert "possibly (entity list capped): 1 record(s)" in out
    assert "customer 42 received by: alice 1, carol 1" in lines
    assert "possibly received by (entity list capped): bob 1" in lines
    assert "warning: 1 unreadable line(s) skipped" in out
    assert "hunter2" not in out


def test_cli_subject_summary(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, "-c", str(trail), "--subject", "alice")
    assert doc["summary"]["subject"] == {
        "subject": "alice",
        "requests": 3,
        "records": 3,
        "customers": 3,
        "customers_capped_requests": 0,
        "routes": [{"route": "customers", "times": 3}],
        "decisions": {"allow": 2, "deny_policy": 1},
        "revealed": {"phone_clear": 3},
    }
    assert main(["audit", "-c", str(trail), "--subject", "alice"]) == 0
    out = capsys.readouterr().out
    assert "  revealed in clear (per rule): phone_clear 3" in out
    assert "subject alice: 3 request(s), 3 record(s) received" in out


def test_cli_time_range_and_decision(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    since, until = format_ts(T0 + 60), format_ts(T0 + 180)
    doc = run_json(capsys, "-c", str(trail), "--since", since, "--until", until)
    assert [r["ts"] for r in doc["matches"]] == [since, format_ts(T0 + 120)]
    doc = run_json(capsys, "-c", str(trail), "--decision", "deny_policy")
    assert [(r["subject"], r["decision"]) for r in doc["matches"]] == [("alice", "deny_policy")]
    doc = run_json(capsys, "-c", str(trail), "--since", "2026-11-25")
    assert doc["matches"] == [] and doc["summary"]["requests"] == 0


def test_cli_explicit_file_reads_only_that_file(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = run_json(capsys, "--file", str(trail.parent / "logs" / "audit.jsonl"), "--route", "x")
    assert doc["matches"] == []
    assert len(doc["sources"]) == 1 and doc["sources"][0]["lines"] == 4


def test_cli_no_match_is_exit_0(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "-c", str(trail), "--customer", "nobody", "--subject", "zed"]) == 0
    assert capsys.readouterr().out.startswith("no matching records\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no audit source"),
        (["--redis-stream", "k"], "--redis-stream needs --redis-url"),
        (["--since", "yesterday", "--file", "x"], "expected RFC 3339"),
        (["--decision", "denied", "--file", "x"], "unknown decision"),
        (["--file", "/nonexistent/audit.jsonl"], "/nonexistent/audit.jsonl: cannot read"),
    ],
)
def test_cli_usage_and_source_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", *argv]) == 1
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_cli_config_without_readable_sinks(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trail.write_text(trail.read_text().replace("{file: logs/audit.jsonl, ", "{file: gone.jsonl, "))
    assert main(["audit", "-c", str(trail)]) == 1
    assert "gone.jsonl: cannot read" in capsys.readouterr().err
    trail.write_text(trail.read_text().replace("audit: [stdout, ", "audit: [stdout]\n#"))
    assert main(["audit", "-c", str(trail)]) == 1
    assert "no file or redis_stream sink" in capsys.readouterr().err


# --- redis stream ---------------------------------------------------------------------


async def xadd(url: str, key: str, records: list[dict[str, Any]], *raw: bytes) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        for r in records:
            line = encode_record(r).rstrip(b"\n")
            await client.xadd(key, {RedisStreamSink.FIELD: line})
        for junk in raw:
            await client.xadd(key, {"other": junk})
    finally:
        await client.aclose()


async def test_read_stream_pages(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        await xadd(server.url, "gateway:audit", [rec(m) for m in range(7)])
        lines = [line async for line in read_stream(server.url, "gateway:audit", page=3)]
        assert [json.loads(line)["ts"] for line in lines] == [
            format_ts(T0 + m * 60) for m in range(7)
        ]
    finally:
        server.stop()


def test_cli_redis_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        records = [
            rec(0, "alice", entities=("42",)),
            rec(1, "bob", entities=("1",), total=101),
            rec(2, "carol", entities=("42",)),
        ]
        asyncio.run(xadd(server.url, "gateway:audit", records, b"junk"))
        argv = ["--redis-stream", "gateway:audit", "--redis-url", server.url]
        doc = run_json(capsys, *argv, "--customer", "42")
        assert [r["subject"] for r in doc["matches"]] == ["alice", "carol"]
        assert [r["subject"] for r in doc["possible"]] == ["bob"]
        assert doc["unreadable"] == 1

        # A config with the same records in a file and a stream (state.redis): merged once.
        cfg = tmp_path / "gateway.yaml"
        cfg.write_text(
            "upstreams: {legacy: {url: 'http://127.0.0.1:9'}}\n"
            "routes: [{name: customers, path: /customers, upstream: legacy, auth: none}]\n"
            f"state: {{redis: '{server.url}'}}\n"
            "audit: [{file: audit.jsonl}, {redis_stream: 'gateway:audit'}]\n"
        )
        write(tmp_path / "audit.jsonl", records)
        doc = run_json(capsys, "-c", str(cfg), "--customer", "42")
        assert [r["subject"] for r in doc["matches"]] == ["alice", "carol"]
        assert doc["duplicates"] == 3

        assert main(["audit", *argv[:1], "nope", *argv[2:]]) == 1
        assert "redis stream nope at" in capsys.readouterr().err
    finally:
        server.stop()
    assert main(["audit", *argv]) == 1
    err = capsys.readouterr().err
    assert f"error: redis stream gateway:audit at {server.url}: cannot read" in err
