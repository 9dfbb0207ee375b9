"""The trail end to end: every outcome leaves exactly one audit record, no sink holds a
protected value or a token, and /metrics moves with traffic."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.auth.devtoken import mint_token
from gateway.config import load_config
from gateway.demo.data import generate_customers
from gateway.demo.upstream import create_app
from gateway.runtime import compile_config
from gateway.server import Gateway
from tests.conftest import RedisServer, UpstreamFactory

ROOT = Path(__file__).parent.parent
SECRET = "trail-tests-signing-key-0123456789abcdef"
ENV = {"GATEWAY_HASH_KEY": "k" * 32, "TRAIL_HMAC": SECRET, "ADMIN_TOKEN": "adm1n-t0ken"}
SENSITIVE = ("id_number", "phone", "email", "address", "bank_card", "txn_password", "password")


def metric_values(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def token(level: str, sub: str) -> str:
    return mint_token({"sub": sub, "clearance": level}, SECRET.encode(), issuer="t", audience="gw")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(2)
    return web.json_response({})


@pytest.fixture
async def setup(
    upstream_factory: UpstreamFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    legacy = await upstream_factory(create_app())
    slow_app = web.Application()
    slow_app.router.add_get("/{tail:.*}", slow)
    slow_url = await upstream_factory(slow_app)
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    pack = rules / "customer.yaml"
    pack.write_text(pack.read_text().replace("max_distinct: 100", "max_distinct: 2"))
    redis = RedisServer(tmp_path)
    redis.start()
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        f"""\
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
admin_token_env: ADMIN_TOKEN
upstreams:
  legacy: {{url: "{legacy}"}}
  slow: {{url: "{slow_url}", timeout: 0.3}}
auth:
  issuers: [{{issuer: t, audience: gw, hmac_secret_env: TRAIL_HMAC, algorithms: [HS256]}}]
routes:
  - {{name: customer, path: "/api/customers/**", methods: [GET], upstream: legacy,
     policy: customer, records: {{path: "$.data", id: id}}}}
  - {{name: ops, path: "/api/ops/**", upstream: legacy, min_level: internal}}
  - {{name: slow, path: "/slow", upstream: slow, auth: none}}
rules: rules
state: {{redis: "{redis.url}", on_failure: closed, timeout: 0.3}}
audit: [{{file: audit.jsonl}}, {{redis_stream: "gateway:audit"}}]
""",
        encoding="utf-8",
    )
    config = load_config(cfg)
    gw = Gateway(config, compile_config(config))
    await gw.start()
    (h, p), (ah, ap) = gw.addresses[0], gw.admin_addresses[0]
    yield gw, f"http://{h}:{p}", f"http://{ah}:{ap}", tmp_path / "audit.jsonl", redis
    await gw.stop()
    redis.stop()


async def test_every_outcome_leaves_one_clean_record(setup: Any) -> None:
    gw, base, admin, audit_file, redis = setup
    secret, public = token("secret", "officer-1"), token("public", "guest-1")
    as_secret = {"Authorization": f"Bearer {secret}"}
    expected: list[tuple[int, str]] = []
    async with aiohttp.ClientSession() as s:
        async with s.get(admin + "/metrics") as resp:
            before = metric_values(await resp.text())

        async def call(path: str, status: int, decision: str, **kw: Any) -> None:
            async with s.get(base + path, **kw) as resp:
                assert resp.status == status, (path, await resp.text())
                await resp.read()
            expected.append((status, decision))

        await call("/api/customers/1", 200, "allow", headers=as_secret)
        await call("/api/customers/2", 200, "allow", headers=as_secret)
        await call("/api/customers/3", 429, "rate_limited", headers=as_secret)
        await call("/api/customers/1", 401, "deny_auth")
        await call(
            "/api/ops/branches", 403, "deny_policy", headers={"Authorization": f"Bearer {public}"}
        )
        await call("/nope?id_number=11010519491231002X", 404, "deny_route")
        await call("/api/%2f/x", 400, "deny_route")
        await call("/api/customers/1/statement", 500, "upstream_error", headers=as_secret)
        await call("/api/customers/export.xml", 502, "fail_closed", headers=as_secret)
        await call("/slow", 504, "upstream_error")
        async with s.post(base + "/api/customers/1", headers=as_secret) as resp:
            assert resp.status == 405
        expected.append((405, "deny_route"))
        reader, writer = await asyncio.open_connection(*base.removeprefix("http://").split(":"))
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: g\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        await reader.read()
        writer.close()
        expected.append((400, "deny_route"))
        # Every record so far reached the Redis stream too (before Redis goes away).
        import redis.asyncio as aioredis

        client = aioredis.from_url(redis.url)
        deadline = asyncio.get_running_loop().time() + 5
        while await client.xlen("gateway:audit") < len(expected):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        stream = [e[1][b"record"] for e in await client.xrange("gateway:audit")]
        await client.aclose()
        redis.stop()
        await call("/api/customers/1", 503, "unavailable", headers=as_secret)
        async with s.get(admin + "/metrics") as resp:
            text = await resp.text()
    await gw.stop()  # flushes the writer

    records = [orjson.loads(line) for line in audit_file.read_bytes().splitlines()]
    assert [(r["status"], r["decision"]) for r in records] == expected
    first = records[0]
    assert first["subject"] == "officer-1" and first["clearance"] == "secret"
    assert first["route"] == "customer" and first["policy"] == "customer"
    assert first["records"] == 1 and first["entities"] == ["1"]
    assert first["fields"]["revealed"]["id_number"] == 1
    assert first["quota"]["bulk-read"]["limit"]["distinct"] == 2
    assert first["ts"].endswith("Z") and len(first["ts"]) == 24
    refused = records[2]
    assert refused["records"] == 0 and refused["entities"] == []
    assert records[5]["path"] == "/nope" and records[5]["query_keys"] == ["id_number"]

    assert [orjson.loads(r) for r in stream] == records[: len(stream)]
    assert len(stream) == len(expected) - 1  # all but the one written while Redis was down
    blob = audit_file.read_bytes() + b"\n".join(stream) + text.encode()
    for customer in generate_customers()[:3]:
        for key in SENSITIVE:
            assert str(customer[key]).encode() not in blob, key
    for tok in (secret, public):
        assert tok.encode() not in blob
    # A query-string value (a whole id number: six digits alone turned up by chance in the
    # digits of durations and timestamps).
    assert b"11010519491231002X" not in blob
    # The registry is process-wide: compare with what it said before this test.
    after = metric_values(text)
    for name, delta in {
        'gateway_requests_total{decision="allow",route="customer",status="200"}': 2,
        'gateway_requests_total{decision="fail_closed",route="customer",status="502"}': 1,
        'gateway_quota_events_total{kind="block",quota="bulk-read"}': 1,
        'gateway_auth_failures_total{reason="missing_token"}': 1,
        'gateway_fail_closed_total{reason="not_json"}': 1,
        'gateway_records_total{route="customer"}': 2,
    }.items():
        assert after.get(name, 0) - before.get(name, 0) == delta, name
    assert after["gateway_state_up"] in (0.0, 1.0)


async def test_required_audit_answers_503_while_the_trail_cannot_be_written(
    upstream_factory: UpstreamFactory, tmp_path: Path
) -> None:
    from gateway.config import Config

    legacy = await upstream_factory(create_app())
    dead = RedisServer(tmp_path)  # never started: the stream sink cannot write
    config = Config.model_validate(
        {
            "listen": "127.0.0.1:0",
            "upstreams": {"legacy": {"url": legacy}},
            "routes": [{"name": "h", "path": "/health", "upstream": "legacy", "auth": "none"}],
            "audit": ["required", {"redis_stream": "gateway:audit", "url": dead.url}],
        }
    )
    gw = Gateway(config, compile_config(config, env={}))
    await gw.start()
    h, p = gw.addresses[0]
    try:
        async with aiohttp.ClientSession() as s:
            deadline = asyncio.get_running_loop().time() + 5
            while True:  # the first failed write marks the trail unwritable
                async with s.get(f"http://{h}:{p}/health") as resp:
                    if resp.status == 503:
                        assert resp.headers["Retry-After"] == "5"
                        break
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
    finally:
        await gw.stop()


async def test_an_internal_error_is_traced_as_the_500_the_caller_got(
    upstream_factory: UpstreamFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import proxy
    from gateway.config import Config

    def broken(ex: Any) -> Any:  # a bug cannot be provoked for real: stand one in
        raise RuntimeError("bug with a value 13812345678 in its message")

    monkeypatch.setattr(proxy, "upstream_target", broken)
    legacy = await upstream_factory(create_app())
    config = Config.model_validate(
        {
            "listen": "127.0.0.1:0",
            "source": str(tmp_path / "gateway.yaml"),
            "upstreams": {"legacy": {"url": legacy}},
            "routes": [{"name": "h", "path": "/health", "upstream": "legacy", "auth": "none"}],
            "audit": [{"file": "audit.jsonl"}],
        }
    )
    gw = Gateway(config, compile_config(config, env={}))
    await gw.start()
    h, p = gw.addresses[0]
    async with aiohttp.ClientSession() as s, s.get(f"http://{h}:{p}/health") as resp:
        assert resp.status == 500
        assert b"13812345678" not in await resp.read()
    await gw.stop()
    (record,) = [orjson.loads(x) for x in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    assert (record["status"], record["decision"], record["reason"]) == (
        500,
        "fail_closed",
        "internal_error",
    )
    assert b"13812345678" not in (tmp_path / "audit.jsonl").read_bytes()
