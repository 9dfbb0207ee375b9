"""Quotas end to end: real upstream, real gateway, memory and a real private redis-server."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.config import Config
from gateway.runtime import compile_config
from gateway.server import Gateway
from tests.conftest import RedisServer, UpstreamFactory, free_port

LEVELS = "levels: [public, internal, confidential, secret]\n"
POLICY = """\
policy: customer
unlisted: keep
fields:
  - {{name: phone, paths: ["$..phone"], level: secret, action: {{mask: cn_phone}}}}
records: {{path: "$.data[*]", id: id}}
quotas:
  - {{name: bulk-read, per: {per}, window: 1h, {limits}}}
"""


SECRET = "quota-tests-signing-key-0123456789abcdef"
ENV = {"GATEWAY_HASH_KEY": "k" * 32, "TEST_HMAC": SECRET}


def rules_dir(tmp_path: Path, limits: str, per: str = "client_ip") -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "levels.yaml").write_text(LEVELS)
    (d / "customer.yaml").write_text(POLICY.format(limits=limits, per=per))
    return d


def bearer(sub: str) -> dict[str, str]:
    from gateway.auth.devtoken import mint_token

    token = mint_token({"sub": sub}, SECRET.encode(), issuer="t", audience="gw")
    return {"Authorization": f"Bearer {token}"}


class Customers:
    """Upstream: /c/{id} answers one customer (as a one-element page), to GET and POST."""

    def __init__(self) -> None:
        self.hits = 0
        self.app = web.Application()
        self.app.router.add_get("/c/{id}", self.one)
        self.app.router.add_post("/c/{id}", self.one)

    async def one(self, request: web.Request) -> web.Response:
        self.hits += 1
        cid = int(request.match_info["id"])
        body = {"data": [{"id": cid, "phone": "13812345678"}]}
        return web.json_response(body)


async def start_gateway(
    upstream: str, rules: Path, state: dict[str, Any] | None = None, auth: str = "none"
) -> tuple[Gateway, str]:
    issuer = {"issuer": "t", "audience": "gw", "hmac_secret_env": "TEST_HMAC"}
    config = Config.model_validate(
        {
            "listen": "127.0.0.1:0",
            "upstreams": {"app": {"url": upstream}},
            "auth": {"issuers": [{**issuer, "algorithms": ["HS256"]}]},
            "routes": [
                {
                    "name": "c",
                    "path": "/c/*",
                    "upstream": "app",
                    "auth": auth,
                    "policy": "customer",
                }
            ],
            "rules": str(rules),
            **({"state": state} if state else {}),
        }
    )
    gw = Gateway(config, compile_config(config, env=ENV))
    await gw.start()
    host, port = gw.addresses[0]
    return gw, f"http://{host}:{port}"


@pytest.mark.parametrize(
    ("limits", "requests", "responses"),
    [
        ("max_requests: 3, max_records: 100", True, True),
        ("max_requests: 3", True, False),
        ("alert_distinct: 5", False, True),
    ],
)
def test_a_compiled_route_carries_its_policys_quotas(
    tmp_path: Path, limits: str, requests: bool, responses: bool
) -> None:
    config = Config.model_validate(
        {
            "listen": "127.0.0.1:0",
            "upstreams": {"app": {"url": "http://127.0.0.1:9"}},
            "routes": [
                {"name": "c", "path": "/c/*", "upstream": "app", "policy": "customer"},
                {"name": "open", "path": "/o/*", "upstream": "app"},
            ],
            "rules": str(rules_dir(tmp_path, limits)),
        }
    )
    compiled = compile_config(config, env=ENV)
    assert compiled.rules is not None
    with_policy, without = compiled.routes
    assert with_policy.quotas == compiled.rules.policies["customer"].quotas
    assert (with_policy.counts_requests, with_policy.counts_responses) == (requests, responses)
    assert (without.quotas, without.counts_requests, without.counts_responses) == ((), False, False)


@pytest.fixture
async def customers(upstream_factory: UpstreamFactory) -> tuple[Customers, str]:
    c = Customers()
    return c, await upstream_factory(c.app)


async def test_distinct_customers_block_refuses_the_response_and_does_not_count(
    customers: tuple[Customers, str], tmp_path: Path
) -> None:
    up, url = customers
    rules = rules_dir(tmp_path, "alert_records: 2, max_distinct: 2", per="subject")
    gw, base = await start_gateway(url, rules, auth="jwt")
    try:
        async with aiohttp.ClientSession(headers=bearer("teller-7")) as s:
            for cid in (1, 2, 1):  # repeat reads of the same customer stay within max_distinct
                async with s.get(f"{base}/c/{cid}") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["data"][0]["phone"] == "138****5678"
                    assert resp.headers["RateLimit-Policy"].startswith('"bulk-read";q=2;w=3600')
            async with s.get(f"{base}/c/3") as resp:
                assert resp.status == 429
                body = await resp.read()
                assert b"13812345678" not in body and b'"id":3' not in body
                problem = orjson.loads(body)
                assert problem["quota"] == "bulk-read"
                assert int(resp.headers["Retry-After"]) >= 1
            # The refused response did not count: customer 1 is still readable.
            async with s.get(f"{base}/c/1") as resp:
                assert resp.status == 200
        # Another subject has a budget of its own.
        async with (
            aiohttp.ClientSession(headers=bearer("teller-8")) as s,
            s.get(f"{base}/c/3") as resp,
        ):
            assert resp.status == 200
    finally:
        await gw.stop()
    assert up.hits == 6  # the refused read reached the upstream: its records decided it


async def test_request_limit_blocks_before_the_upstream(
    customers: tuple[Customers, str], tmp_path: Path
) -> None:
    up, url = customers
    gw, base = await start_gateway(url, rules_dir(tmp_path, "max_requests: 2"))
    try:
        async with aiohttp.ClientSession() as s:
            statuses = []
            for cid in (1, 2, 3, 4):
                async with s.get(f"{base}/c/{cid}") as resp:
                    statuses.append(resp.status)
    finally:
        await gw.stop()
    assert statuses == [200, 200, 429, 429]
    assert up.hits == 2


async def test_a_request_keys_its_buckets_once_for_every_call_to_the_store(
    customers: tuple[Customers, str], tmp_path: Path
) -> None:
    from gateway.quota import KeyParts, MemoryBackend

    _, url = customers
    rules = rules_dir(tmp_path, "max_requests: 10, max_records: 2", per="subject")
    gw, base = await start_gateway(url, rules, auth="jwt")
    state = gw.runtime.state
    assert isinstance(state, MemoryBackend)
    calls: list[tuple[str, object]] = []

    def spy(name: str) -> None:
        real = getattr(state, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            got = real(*args, **kwargs)
            calls.append((name, got if name == "buckets" else args[1]))
            return got

        setattr(state, name, call)

    for name in ("buckets", "held", "precheck", "account"):
        spy(name)
    try:
        async with aiohttp.ClientSession(headers=bearer("alice")) as s:
            per_request = []
            for cid in (1, 2, 3):
                calls.clear()
                await get_status(s, f"{base}/c/{cid}")
                per_request.append([name for name, _ in calls])
                keyed = calls[0][1]
                # The very buckets the limit stage computed, passed to each call.
                assert all(buckets is keyed for _, buckets in calls)
    finally:
        await gw.stop()
    quotas = gw.runtime.rules.policies["customer"].quotas  # type: ignore[union-attr]
    assert keyed == MemoryBackend(id_key=b"k" * 32).buckets(
        quotas, KeyParts("alice", "127.0.0.1", "c")
    )
    full = ["buckets", "held", "precheck", "account"]
    assert per_request == [full, full, ["buckets", "held"]]  # the third is held: no data


@pytest.mark.parametrize(("on_failure", "status"), [("closed", 503), ("open", 200)])
async def test_redis_outage_follows_on_failure_and_recovers(
    customers: tuple[Customers, str], tmp_path: Path, on_failure: str, status: int
) -> None:
    up, url = customers
    redis = RedisServer(tmp_path)
    redis.start()
    gw, base = await start_gateway(
        url,
        rules_dir(tmp_path, "max_records: 100"),
        {"redis": redis.url, "on_failure": on_failure, "timeout": 0.3},
    )
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/c/1") as resp:
                assert resp.status == 200
            redis.stop()
            for cid in (2, 3):
                async with s.get(f"{base}/c/{cid}") as resp:
                    assert resp.status == status
                    if status == 503:
                        assert resp.headers["Retry-After"] == "5"
                        assert b"13812345678" not in await resp.read()
            # The first request of the outage learnt it after the upstream (a GET, its
            # data withheld); from then on the store is asked first, until it answers.
            assert up.hits == (2 if status == 503 else 3)
            redis.start()
            async with s.get(f"{base}/c/4") as resp:
                assert resp.status == 200  # recovery without a restart
    finally:
        await gw.stop()
        redis.stop()


class ScriptCalls:
    """How many quota scripts a redis-server ran: one per round trip of the quota path."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.client: Any = aioredis.Redis.from_url(url)

    async def reset(self) -> None:
        await self.client.config_resetstat()

    async def count(self) -> int:
        stats = await self.client.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))

    async def close(self) -> None:
        await self.client.aclose()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, ScriptCalls]]:
    redis = RedisServer(tmp_path)
    redis.start()
    calls = ScriptCalls(redis.url)
    yield redis, calls
    await calls.close()
    redis.stop()


async def get_status(s: aiohttp.ClientSession, url: str, method: str = "GET") -> int:
    async with s.request(method, url) as resp:
        await resp.read()
        return resp.status


@pytest.mark.parametrize("state", ["memory", "redis"])
async def test_a_caller_at_max_records_is_refused_before_the_upstream(
    customers: tuple[Customers, str],
    tmp_path: Path,
    private_redis: tuple[RedisServer, ScriptCalls],
    state: str,
) -> None:
    up, url = customers
    rules = rules_dir(tmp_path, "max_records: 3", per="subject")
    config = {"redis": private_redis[0].url} if state == "redis" else None
    gw, base = await start_gateway(url, rules, config, auth="jwt")
    try:
        async with aiohttp.ClientSession(headers=bearer("alice")) as s:
            assert [await get_status(s, f"{base}/c/{cid}") for cid in (1, 2, 3)] == [200] * 3
            async with s.get(f"{base}/c/4") as resp:
                body = await resp.read()
                assert resp.status == 429
                retry = int(resp.headers["Retry-After"])
                assert 3599 <= retry <= 3600
                assert resp.headers["RateLimit-Policy"] == '"bulk-read";q=3;w=3600;qu="records"'
                assert resp.headers["RateLimit"] == f'"bulk-read";r=0;t={retry}'
                assert orjson.loads(body)["quota"] == "bulk-read"
            assert await get_status(s, f"{base}/c/1") == 429  # re-reads are records too
        assert up.hits == 3  # neither refusal reached the upstream
        async with aiohttp.ClientSession(headers=bearer("bob")) as s:
            assert await get_status(s, f"{base}/c/4") == 200
        assert up.hits == 4
    finally:
        await gw.stop()


async def test_one_round_trip_per_request_and_none_for_a_known_block(
    customers: tuple[Customers, str],
    tmp_path: Path,
    private_redis: tuple[RedisServer, ScriptCalls],
) -> None:
    up, url = customers
    redis, scripts = private_redis
    rules = rules_dir(tmp_path, "alert_records: 2, max_records: 3, max_distinct: 10", "subject")
    gw, base = await start_gateway(url, rules, {"redis": redis.url}, auth="jwt")
    try:
        async with aiohttp.ClientSession(headers=bearer("alice")) as s:
            assert await get_status(s, f"{base}/c/1") == 200  # loads the script
            await scripts.reset()
            assert [await get_status(s, f"{base}/c/{cid}") for cid in (2, 3)] == [200, 200]
            assert await scripts.count() == 2  # check and account: one script after masking
            assert await get_status(s, f"{base}/c/4") == 429
            assert await scripts.count() == 2  # refused from what the process knows
        assert up.hits == 3
    finally:
        await gw.stop()


@pytest.mark.parametrize(
    ("limits", "per_request"), [("max_requests: 3, max_records: 100", 2), ("max_requests: 3", 1)]
)
async def test_counting_requests_costs_a_round_trip_before_the_upstream(
    customers: tuple[Customers, str],
    tmp_path: Path,
    private_redis: tuple[RedisServer, ScriptCalls],
    limits: str,
    per_request: int,
) -> None:
    up, url = customers
    redis, scripts = private_redis
    rules = rules_dir(tmp_path, limits, "subject")
    gw, base = await start_gateway(url, rules, {"redis": redis.url}, auth="jwt")
    try:
        async with aiohttp.ClientSession(headers=bearer("alice")) as s:
            assert await get_status(s, f"{base}/c/1") == 200
            await scripts.reset()
            assert [await get_status(s, f"{base}/c/{cid}") for cid in (2, 3)] == [200, 200]
            # The request is counted before the upstream, records (if any) after masking.
            assert await scripts.count() == 2 * per_request
            async with s.get(f"{base}/c/4") as resp:
                assert resp.status == 429
                assert resp.headers["RateLimit-Policy"] == '"bulk-read";q=3;w=3600'
            assert await scripts.count() == 2 * per_request
        assert up.hits == 3
    finally:
        await gw.stop()


async def test_a_block_this_process_has_not_seen(
    customers: tuple[Customers, str],
    tmp_path: Path,
    private_redis: tuple[RedisServer, ScriptCalls],
) -> None:
    """Another process (here a backend that announces nothing) took alice to her limit."""
    from gateway.quota import KeyParts, RedisBackend
    from gateway.rules.model import Quota

    up, url = customers
    redis, _ = private_redis
    rules = rules_dir(tmp_path, "max_records: 3", per="subject")
    gw, base = await start_gateway(url, rules, {"redis": redis.url}, auth="jwt")
    other = RedisBackend(redis.url, id_key=ENV["GATEWAY_HASH_KEY"].encode(), broadcast=False)
    try:
        quota = Quota("bulk-read", "subject", 3600, {}, {"records": 3})
        for who in ("alice", "carol"):
            caller = other.buckets((quota,), KeyParts(who, "127.0.0.1", "c"))
            assert (await other.account((quota,), caller, 3, ["7", "8", "9"])).allowed
        async with aiohttp.ClientSession(headers=bearer("carol")) as s:
            # A method that may change something upstream is checked in the store first.
            assert await get_status(s, f"{base}/c/1", "POST") == 429
        assert up.hits == 0
        async with aiohttp.ClientSession(headers=bearer("alice")) as s:
            # A GET is answered by the one script after masking: the upstream is
            # contacted, the response refused (no data), and the block learnt...
            async with s.get(f"{base}/c/1") as resp:
                assert resp.status == 429
                assert b"13812345678" not in await resp.read()
            assert up.hits == 1
            # ... so the next request is refused before the upstream.
            assert await get_status(s, f"{base}/c/2") == 429
            assert up.hits == 1
    finally:
        await other.close()
        await gw.stop()


@pytest.fixture
async def two_gateway_processes(
    customers: tuple[Customers, str], tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Customers, list[str], RedisServer]]:
    """Two `gateway serve` processes sharing one redis-server; the quota's limits can be
    given as an indirect parameter (default ``max_records: 20``, per client address)."""
    up, url = customers
    redis = RedisServer(tmp_path)
    redis.start()
    rules = rules_dir(tmp_path, getattr(request, "param", "max_records: 20"))
    procs, bases = [], []
    for i in range(2):
        port = free_port()
        cfg = tmp_path / f"gw{i}.yaml"
        cfg.write_text(
            f"listen: 127.0.0.1:{port}\n"
            f"upstreams: {{app: {{url: '{url}'}}}}\n"
            "routes: [{name: c, path: '/c/*', upstream: app, auth: none, policy: customer}]\n"
            f"rules: {rules}\n"
            f"state: {{redis: '{redis.url}', on_failure: closed, timeout: 2}}\n"
        )
        env = {**os.environ, "GATEWAY_HASH_KEY": "k" * 32}
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "-c",
                str(cfg),
                env=env,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )
        bases.append(f"http://127.0.0.1:{port}")
    try:
        for base in bases:
            port = int(base.rsplit(":", 1)[1])
            deadline = time.monotonic() + 20
            while True:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
        yield up, bases, redis
    finally:
        for p in procs:
            p.terminate()
            await p.wait()
        redis.stop()


async def test_exact_under_concurrency_across_two_processes(
    two_gateway_processes: tuple[Customers, list[str], RedisServer],
) -> None:
    _, bases, _ = two_gateway_processes
    async with aiohttp.ClientSession() as s:

        async def get(i: int) -> tuple[int, bytes]:
            async with s.get(f"{bases[i % 2]}/c/{i}") as resp:
                return resp.status, await resp.read()

        results = await asyncio.gather(*(get(i) for i in range(50)))
    delivered = [body for status, body in results if status == 200]
    refused = [body for status, body in results if status == 429]
    statuses = sorted(status for status, _ in results)
    assert len(delivered) == 20, statuses  # exactly the limit: never more, and no lost budget
    assert len(refused) == 30
    assert all(b"138****5678" in b for b in delivered)
    assert not any(b"phone" in b for b in refused)


@pytest.mark.parametrize("two_gateway_processes", ["max_records: 3"], indirect=True)
async def test_a_block_reached_through_one_process_keeps_the_other_from_the_upstream(
    two_gateway_processes: tuple[Customers, list[str], RedisServer],
) -> None:
    import redis.asyncio as aioredis

    up, bases, redis = two_gateway_processes
    r: Any = aioredis.Redis.from_url(redis.url)
    try:  # both processes listen for announced blocks (from their first health check)
        deadline = time.monotonic() + 20
        while (await r.pubsub_numsub("gw:quota:holds"))[0][1] < 2:
            assert time.monotonic() < deadline, "the gateways did not subscribe"
            await asyncio.sleep(0.05)
    finally:
        await r.aclose()
    async with aiohttp.ClientSession() as s:
        assert [await get_status(s, f"{bases[0]}/c/{cid}") for cid in (1, 2, 3)] == [200] * 3
        await asyncio.sleep(0.5)  # the announcement is one message on a socket away
        async with s.get(f"{bases[1]}/c/4") as resp:
            assert resp.status == 429
            assert 3597 <= int(resp.headers["Retry-After"]) <= 3600
            assert "RateLimit" not in resp.headers  # a per-address bucket is not disclosed
        async with s.get(f"{bases[0]}/c/5") as resp:
            assert resp.status == 429
    assert up.hits == 3
