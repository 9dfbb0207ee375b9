"""Redis backend specifics: atomicity across pools, outages, key scheme, NOSCRIPT."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.quota import KeyParts, RedisBackend, StateUnavailable
from gateway.quota.engine import Keyer
from gateway.quota.redisstore import REMOTE_MARGIN
from gateway.rules.model import Quota

ALICE = KeyParts("alice", "10.0.0.1", "customers")
MakeRedis = Callable[..., RedisBackend]  # the make_redis fixture (conftest)


async def test_concurrent_accounts_from_two_pools_never_exceed_the_limit(
    make_redis: MakeRedis,
) -> None:
    a = make_redis(prefix="race:")
    b = make_redis(prefix="race:")
    qs = (Quota("bulk", "subject", 60, {}, {"records": 20, "distinct": 1000}),)
    alice = a.buckets(qs, ALICE)
    calls = [
        (a if i % 2 else b).account(qs, alice, 1, [f"c{i}"], now=1000 + i / 1000) for i in range(50)
    ]
    results = await asyncio.gather(*calls)
    assert sum(d.allowed for d in results) == 20
    d = await a.precheck(qs, alice, now=1001)
    assert (d.usage["bulk"].used_records, d.usage["bulk"].used_distinct) == (20, 20)


async def test_concurrent_multi_record_responses_stay_within_the_limit(
    make_redis: MakeRedis,
) -> None:
    a, b = make_redis(prefix="race2:"), make_redis(prefix="race2:")
    qs = (Quota("bulk", "subject", 60, {}, {"records": 50}),)
    alice = a.buckets(qs, ALICE)
    sizes = [(i % 7) + 1 for i in range(50)]
    results = await asyncio.gather(
        *((a if i % 2 else b).account(qs, alice, n, []) for i, n in enumerate(sizes))
    )
    accepted = sum(n for n, d in zip(sizes, results, strict=True) if d.allowed)
    assert accepted <= 50
    assert (await a.precheck(qs, alice)).usage["bulk"].used_records == accepted


async def test_concurrent_prechecks_count_exactly(make_redis: MakeRedis) -> None:
    a, b = make_redis(prefix="race3:"), make_redis(prefix="race3:")
    qs = (Quota("paced", "subject", 60, {}, {"requests": 10}),)
    alice = a.buckets(qs, ALICE)
    results = await asyncio.gather(*((a if i % 2 else b).precheck(qs, alice) for i in range(50)))
    assert sum(d.allowed for d in results) == 10


async def test_outage_fails_promptly_and_recovers_without_a_new_backend(
    make_redis: MakeRedis, own_redis: Any
) -> None:
    backend = make_redis(own_redis.url, timeout=0.5)
    qs = (Quota("bulk", "subject", 60, {}, {"records": 5}),)
    alice = backend.buckets(qs, ALICE)
    assert (await backend.account(qs, alice, 1, ["a"])).allowed
    own_redis.stop()
    for call in (backend.precheck(qs, alice), backend.account(qs, alice, 1, ["b"]), backend.ping()):
        start = time.monotonic()
        with pytest.raises(StateUnavailable):
            await call
        assert time.monotonic() - start < 1.0
    own_redis.start()  # same port, empty: no data and no cached script
    await backend.ping()
    d = await backend.account(qs, alice, 1, ["b"])
    assert d.allowed and d.usage["bulk"].used_records == 1


async def test_unreachable_server_times_out_within_the_timeout(make_redis: MakeRedis) -> None:
    # 192.0.2.0/24 is TEST-NET-1: connects hang (or fail fast) but never answer.
    backend = make_redis("redis://192.0.2.1:6390/0", timeout=0.3)
    start = time.monotonic()
    qs = (Quota("q", "subject", 60, {}, {"requests": 1}),)
    with pytest.raises(StateUnavailable):
        await backend.precheck(qs, backend.buckets(qs, ALICE))
    assert time.monotonic() - start < 0.8


async def test_keys_are_hash_tagged_expire_and_hold_no_ids(
    make_redis: MakeRedis, redis_server: Any
) -> None:
    backend = make_redis(prefix="keys:", id_key=b"k")
    qs = (
        Quota("bulk", "subject", 60, {}, {"records": 50, "distinct": 50, "requests": 50}),
        Quota("per-route", "subject_route", 120, {}, {"records": 50}),
    )
    alice = backend.buckets(qs, ALICE)
    await backend.precheck(qs, alice)
    await backend.account(qs, alice, 2, ["110101199003074514", "c2"])
    r: Any = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = sorted(k.decode() for k in await r.keys("keys:*"))
        assert len(keys) == 6  # q, e, i, n of bulk; e, n of per-route
        tags = {k[k.index("{") : k.index("}") + 1] for k in keys}
        assert len(tags) == 1 and "alice" not in "".join(keys)
        tag = Keyer(b"k").bucket(qs[0], ALICE).tag
        assert tags == {"{" + tag + "}"}
        for k in keys:
            ttl = await r.pttl(k)
            assert 0 < ttl <= (121_000 if "per-route" in k else 61_000)
        ids_key = next(k for k in keys if k.startswith("keys:{") and k.endswith(":s:bulk:i"))
        members = await r.zrange(ids_key, 0, -1)
        assert len(members) == 2 and all(len(m) == 16 for m in members)
        assert not any(b"1101011990" in m or m == b"c2" for m in members)
    finally:
        await r.aclose()


async def test_noscript_recovery(make_redis: MakeRedis, redis_server: Any) -> None:
    backend = make_redis()
    qs = (Quota("bulk", "subject", 60, {}, {"records": 5}),)
    alice = backend.buckets(qs, ALICE)
    await backend.account(qs, alice, 1, [])
    r: Any = aioredis.Redis.from_url(redis_server.url)
    try:
        await r.script_flush()
    finally:
        await r.aclose()
    d = await backend.account(qs, alice, 1, [])
    assert d.allowed and d.usage["bulk"].used_records == 2


async def test_server_time_is_used_when_no_time_is_given(
    make_redis: MakeRedis, redis_server: Any
) -> None:
    backend = make_redis()
    qs = (Quota("bulk", "subject", 60, {}, {"records": 1}),)
    alice = backend.buckets(qs, ALICE)
    await backend.account(qs, alice, 1, [])
    assert not (await backend.precheck(qs, alice)).allowed
    events = backend.keys(Keyer().bucket(qs[0], ALICE))[1]
    r: Any = aioredis.Redis.from_url(redis_server.url)
    try:
        ((_, score),) = await r.zrange(events, 0, -1, withscores=True)
        server_s, server_us = await r.time()
    finally:
        await r.aclose()
    # The event carries the server's clock (ms), not a monotonic or caller time.
    assert abs(score - (server_s * 1000 + server_us // 1000)) < 2000


async def _subscribers(url: str, channel: str, count: int) -> None:
    """Wait until ``count`` backends listen on the holds channel."""
    r: Any = aioredis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 5
        while (await r.pubsub_numsub(channel))[0][1] < count:
            assert time.monotonic() < deadline, "backends did not subscribe"
            await asyncio.sleep(0.01)
    finally:
        await r.aclose()


async def _eventually_held(
    backend: RedisBackend, qs: tuple[Quota, ...], parts: KeyParts = ALICE
) -> Any:
    deadline = time.monotonic() + 5
    buckets = backend.buckets(qs, parts)
    while (held := backend.held(qs, buckets)) is None:
        assert time.monotonic() < deadline, "the hold was not announced"
        await asyncio.sleep(0.01)
    return held


async def _listening(url: str, prefix: str, *backends: RedisBackend) -> None:
    for b in backends:
        await b.ping()  # a backend listens from its first call
    await _subscribers(url, prefix + "holds", len(backends))


async def test_holds_are_announced_to_the_other_processes(
    make_redis: MakeRedis, redis_server: Any
) -> None:
    a, b = make_redis(prefix="ann:"), make_redis(prefix="ann:")
    qs = (Quota("bulk", "subject", 3600, {}, {"records": 2}),)
    alice = a.buckets(qs, ALICE)
    await _listening(redis_server.url, "ann:", a, b)
    assert (await a.account(qs, alice, 2, ["c1", "c2"])).allowed
    held = await _eventually_held(b, qs)
    assert (held.quota, held.metric, held.usage["bulk"].used_records) == ("bulk", "records", 2)
    # Announced holds end a margin early; the caller's own process keeps the exact one.
    assert 3600 - REMOTE_MARGIN - 1 <= (held.retry_after or 0) <= 3600 - REMOTE_MARGIN
    own = a.held(qs, alice)
    assert own is not None and own.retry_after == 3600
    assert b.held(qs, b.buckets(qs, KeyParts("bob", "10.0.0.1", "customers"))) is None


async def test_a_call_over_two_key_groups_announces_only_what_it_kept(
    make_redis: MakeRedis, redis_server: Any
) -> None:
    a, b = make_redis(prefix="ann2:"), make_redis(prefix="ann2:")
    ip = Quota("ip", "client_ip", 3600, {}, {"records": 2})
    sub = Quota("sub", "subject", 3600, {}, {"records": 1})
    await _listening(redis_server.url, "ann2:", a, b)
    # The address group runs first and reaches its max; the subject group refuses
    # (2 > 1), so the address group's write is undone and must not be announced.
    alice = a.buckets((ip, sub), ALICE)
    d = await a.account((ip, sub), alice, 2, [])
    assert (d.allowed, d.quota) == (False, "sub")
    # A later announcement (the channel keeps order): once it has arrived, an
    # announcement of the undone hold would have too.
    assert (await a.account((sub,), alice[1:], 1, [])).allowed
    assert (await _eventually_held(b, (sub,))).quota == "sub"
    assert b.held((ip,), alice[:1]) is None
    # Both groups kept: the address group's hold travels with the subject group's call.
    bob = KeyParts("bob", "10.0.0.9", "customers")
    bobs = a.buckets((ip, sub), bob)
    assert (await a.account((ip,), bobs[:1], 1, [])).allowed
    assert (await a.account((ip, sub), bobs, 1, [])).allowed
    held = await _eventually_held(b, (ip, sub), bob)
    assert set(held.usage) == {"ip", "sub"}


async def test_announcements_resume_after_an_outage(make_redis: MakeRedis, own_redis: Any) -> None:
    a, b = make_redis(own_redis.url, prefix="ann3:"), make_redis(own_redis.url, prefix="ann3:")
    qs = (Quota("bulk", "subject", 3600, {}, {"records": 1}),)
    alice = a.buckets(qs, ALICE)
    await _listening(own_redis.url, "ann3:", a, b)
    own_redis.stop()
    own_redis.start()  # same port, empty
    await _subscribers(own_redis.url, "ann3:holds", 2)  # both listen again by themselves
    assert (await a.account(qs, alice, 1, ["c1"])).allowed
    assert (await _eventually_held(b, qs)).quota == "bulk"


async def test_holds_shorter_than_the_margin_are_not_announced(
    make_redis: MakeRedis, redis_server: Any
) -> None:
    a, b = make_redis(prefix="ann4:"), make_redis(prefix="ann4:")
    paced = Quota("paced", "subject", 1, {}, {"requests": 1})  # a one-second window
    bulk = Quota("bulk", "subject", 3600, {}, {"records": 1})
    await _listening(redis_server.url, "ann4:", a, b)
    alice = a.buckets((paced, bulk), ALICE)
    assert (await a.precheck((paced,), alice[:1])).allowed
    assert a.held((paced,), alice[:1]) is not None  # held here, exactly
    assert (await a.account((bulk,), alice[1:], 1, [])).allowed  # a later, long hold
    await _eventually_held(b, (bulk,))
    assert b.held((paced,), alice[:1]) is None
