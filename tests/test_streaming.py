"""Record-by-record masking: the same bytes as the buffered path, bounded memory, and a
stream that fails after its first byte is cut mid-body, never completed."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.config import Config
from gateway.rules import RuleSet, load_rules, principal_from_claims
from gateway.rules.bench import _response, customers
from gateway.rules.plan import Plan
from gateway.runtime import compile_config
from gateway.server import Gateway
from gateway.streaming import NotStreamable, RecordStream, StreamError, records_key
from tests.conftest import UpstreamFactory

SHIPPED = Path(__file__).resolve().parents[1] / "rules"
PRODUCT = Path(__file__).parent / "data" / "product_rules"
LEVELS = ["public", "internal", "confidential", "secret"]


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return load_rules(SHIPPED, hash_key=b"k")


def plan_for(rs: RuleSet, level: str, policy: str = "customer") -> Plan:
    return rs.plan(policy, principal_from_claims({"clearance": level}, LEVELS))


def run(plan: Plan, body: bytes, seed: int = 0, max_value: int = 1 << 20) -> Any:
    assert plan.records is not None
    stream = RecordStream(plan, plan.records, max_value=max_value)
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(body):
        k = rng.randint(1, 64)
        out.append(stream.feed(body[i : i + k]))
        i += k
    out.append(stream.finish())
    return b"".join(out), stream.result()


BODIES = [
    _response(customers(25)),
    orjson.dumps({"page": 1, "data": [], "total": 0}),
    orjson.dumps({"data": [{"x": 1}, {"y": 2}], "extra": {"a": 1}}),
    orjson.dumps({"data": [1, "a", None, {"id": 3, "phone": "13812345678"}], "page": 2}),
    b' {\n "page" : 1 ,\n "data" : [ {"id": 1, "name": "\\u5f20\\u4e09"} , {"id":2} ] }\n',
    orjson.dumps({"data": {"id": 5, "name": "张三"}}),  # one record: an ordinary member
]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("body", BODIES)
def test_same_bytes_counts_and_records_as_the_buffered_path(
    shipped: RuleSet, level: str, body: bytes
) -> None:
    plan = plan_for(shipped, level)
    whole = plan.mask_bytes(body)
    assert whole is not None
    for seed in range(4):
        out, result = run(plan, body, seed)
        assert out == whole[0]
        assert result.fields == whole[1].fields
        assert result.records == whole[1].records


def test_an_emptied_allow_list_array_is_removed_as_when_buffered(shipped: RuleSet) -> None:
    plan = plan_for(shipped, "public")
    body = orjson.dumps({"data": [{"password": "x"}, {"pin": "1"}], "page": 1})
    whole = plan.mask_bytes(body)
    assert whole is not None and whole[0] == b'{"page":1}'
    assert run(plan, body)[0] == whole[0]


def test_records_key() -> None:
    rs = load_rules(PRODUCT, hash_key=b"k")
    assert records_key(rs.policies["customer"].records) == b"data"
    assert records_key(None) is False


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"data":[{"id":1}', "truncated"),
        (b'{"data":[{"id":1}]', "truncated"),
        (b'{"data":[{"id":1},{"id":}]}', "invalid_json"),
        (b'{"data":[{"id":1}]} x', "invalid_json"),
        (b'{"data":[{"id":1,"id":2}]}', "invalid_json"),  # the native pass declines it
        (b'{"page":1,"page":2,"data":[]}', "ambiguous_name"),
        (b'{"p\\u0061ge":1,"data":[]}', "ambiguous_name"),
        (b'{"data":[{"id":1}] "x":1}', "invalid_json"),
        (b'{"data":["\xff"]}', "invalid_json"),
        (b'{"p\xffge":1,"data":[]}', "invalid_json"),  # names go out as they came: checked
        (b'{"p\tge":1,"data":[]}', "invalid_json"),
        (b'{"p\xed\xa0\x80":1,"data":[]}', "invalid_json"),
    ],
)
def test_what_cannot_be_masked_stops_the_stream(shipped: RuleSet, body: bytes, reason: str) -> None:
    with pytest.raises(StreamError) as err:
        run(plan_for(shipped, "public"), body)
    assert err.value.reason == reason


def test_a_record_larger_than_the_cap_stops_the_stream(shipped: RuleSet) -> None:
    body = orjson.dumps({"data": [{"id": 1, "remarks": "x" * 5000}]})
    with pytest.raises(StreamError) as err:
        run(plan_for(shipped, "secret"), body, max_value=1000)
    assert err.value.reason == "too_large"


def test_a_body_of_another_shape_is_left_to_the_buffered_path(shipped: RuleSet) -> None:
    plan = plan_for(shipped, "public")
    assert plan.records is not None
    stream = RecordStream(plan, plan.records, max_value=1000)
    with pytest.raises(NotStreamable):
        stream.feed(b"[1,2,3]")
    assert not stream.started


# -- end to end ------------------------------------------------------------------------------
RECORD = {
    "id": 1,
    "phone": "13812345678",
    "password": "hunter2",
    "id_number": "11010519491231002X",
}
MASKED = {"id": 1, "id_number": "110105********002X"}


def array_body(n: int, tail: bytes = b"]}", ids: int = 0) -> list[bytes]:
    parts = [b'{"page":1,"data":[']
    for i in range(n):
        rid = i % ids + 1 if ids else i + 1
        parts.append((b"," if i else b"") + orjson.dumps({**RECORD, "id": rid}))
    parts.append(tail)
    return parts


@pytest.fixture
async def env(upstream_factory: UpstreamFactory, tmp_path: Path) -> Any:
    answers: dict[str, list[bytes]] = {}
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    (rules / "levels.yaml").write_text((PRODUCT / "levels.yaml").read_text("utf-8"), "utf-8")
    customer = (PRODUCT / "customer.yaml").read_text("utf-8")
    lines = [line for line in customer.splitlines() if "bulk-read" not in line]
    (rules / "customer.yaml").write_text(
        "\n".join(lines).replace("quotas:", "quotas: []") + "\n", "utf-8"
    )
    limited = [
        line
        if "bulk-read" not in line
        else "  - {name: bulk-read, per: client_ip, window: 1h, max_records: 1000}"
        for line in customer.splitlines()
    ]
    (rules / "limited.yaml").write_text(
        "\n".join(limited).replace("policy: customer", "policy: limited") + "\n", "utf-8"
    )

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i, part in enumerate(answers[request.path]):
            if i % 100 == 0:
                await asyncio.sleep(0.002)  # arrive in parts, as a real slow upstream does
            if part == b"<cut>":
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write(part)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    url = await upstream_factory(app)
    config = Config.model_validate(
        {
            "listen": "127.0.0.1:0",
            "upstreams": {"app": {"url": url, "timeout": 5}},
            "routes": [
                {
                    "name": "l",
                    "path": "/limited/**",
                    "upstream": "app",
                    "auth": "none",
                    "policy": "limited",
                },
                {
                    "name": "c",
                    "path": "/**",
                    "upstream": "app",
                    "auth": "none",
                    "policy": "customer",
                },
            ],
            "rules": str(rules),
            "limits": {"max_response_body": 16 * 1024, "stream_after": 4 * 1024},
        }
    )
    gateway = Gateway(config, compile_config(config, env={"GATEWAY_HASH_KEY": "k" * 32}))
    await gateway.start()
    host, port = gateway.addresses[0]
    async with aiohttp.ClientSession() as session:
        yield answers, f"http://{host}:{port}", session
    await gateway.stop()


async def test_a_body_far_over_the_cap_streams_masked(env: Any) -> None:
    answers, gw, s = env
    answers["/big"] = array_body(3000)  # ~300 KB, the buffered cap is 16 KB
    async with s.get(gw + "/big") as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        assert "X-Request-ID" in resp.headers
        doc = orjson.loads(await resp.read())
    assert doc["page"] == 1
    assert len(doc["data"]) == 3000
    assert doc["data"][0] == MASKED
    assert doc["data"][2999] == {**MASKED, "id": 3000}


async def test_a_small_body_still_takes_the_buffered_path(env: Any) -> None:
    answers, gw, s = env
    answers["/small"] = array_body(2)
    async with s.get(gw + "/small") as resp:
        assert resp.status == 200
        assert "Content-Length" in resp.headers
        assert orjson.loads(await resp.read())["data"][1] == {**MASKED, "id": 2}


@pytest.mark.parametrize("tail", [b',{"id":', b',{"id":1,"phone":"13812345678"}] x', b"<cut>"])
async def test_a_bad_tail_aborts_the_connection_mid_body(env: Any, tail: bytes) -> None:
    answers, gw, s = env
    answers["/bad"] = [*array_body(3000, tail=b"")[:-1], tail]
    async with s.get(gw + "/bad") as resp:
        assert resp.status == 200  # the head went out before the tail arrived
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_a_stream_is_cut_where_a_quota_would_be_exceeded(env: Any) -> None:
    answers, gw, s = env
    answers["/limited/x"] = array_body(3000)
    received = b""
    async with s.get(gw + "/limited/x") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                received += chunk
    assert 0 < received.count(b'"id":') <= 1000  # never more records than the quota allows
    async with s.get(gw + "/limited/x") as again:  # the caller is now at the limit
        assert again.status == 429


async def test_a_bad_head_is_the_usual_502(env: Any) -> None:
    answers, gw, s = env
    answers["/head"] = [b'{"data":[{"id":1,"id":2}' + b" " * 5000, b"]}"]
    async with s.get(gw + "/head") as resp:
        assert resp.status == 502
        body = await resp.read()
    assert b"13812345678" not in body


async def test_streaming_keeps_memory_bounded(env: Any) -> None:
    """The gateway holds one record at a time, not the body: a body 30x the buffered
    cap goes through while the process's traced allocations stay small."""
    import tracemalloc

    answers, gw, s = env
    answers["/huge"] = array_body(30000, ids=50)  # few distinct ids: the audit keeps those
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        async with s.get(gw + "/huge") as resp:
            size = 0
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                await asyncio.sleep(0)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    sent = sum(len(p) for p in answers["/huge"])
    assert sent > 2_500_000 and size > 1_200_000
    # Upstream, gateway and client share this process; what they hold together is
    # their socket buffers (a few 64 KiB each), never the body.
    assert peak < sent / 2, (peak, sent)
