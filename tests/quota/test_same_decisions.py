"""Memory and Redis, driven through the same random calls, decide exactly alike.

The Redis script is the reference here: it is an independent implementation of
the engine's rules, and the memory backend takes shortcuts (see its ``account``:
which ids are new is looked up only near ``max_distinct``). Small limits and
windows keep most calls near a limit, so both sides of every shortcut are taken.
A call's quotas share one tag (one script, one step): a call over two tags that one
refuses reports, from Redis, resets and holds as they were before its undo.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from gateway.quota import KeyParts, MemoryBackend, RedisBackend, ratelimit_headers
from gateway.rules.model import Quota

MakeRedis = Callable[..., RedisBackend]  # the make_redis fixture (conftest)
CALLERS = (
    KeyParts("alice", "10.0.0.1", "customers"),
    KeyParts("bob", "10.0.0.1", "accounts"),
    KeyParts(None, "10.0.0.2", "customers"),
)


def _quota(rng: random.Random, name: str, per: str) -> Quota:
    limits: dict[str, int] = {}
    alerts: dict[str, int] = {}
    for m, top in (("records", 12), ("distinct", 6), ("requests", 5)):
        roll = rng.random()
        if roll < 0.5:
            limits[m] = rng.randint(1, top)
        if roll < 0.2 or 0.6 < roll < 0.8:
            alerts[m] = rng.randint(1, limits.get(m, top))
    if not limits and not alerts:
        limits["records"] = rng.randint(1, 12)
    if per == "subject":
        per = rng.choice(("subject", "subject_route"))
    return Quota(name, per, rng.choice((2, 5, 30)), alerts, limits)


async def test_memory_decides_as_redis_does(make_redis: MakeRedis) -> None:
    for seed in range(60):
        rng = random.Random(seed)
        per = rng.choice(("subject", "client_ip"))
        qs = tuple(_quota(rng, f"q{i}", per) for i in range(rng.randint(1, 3)))
        memory, redis = MemoryBackend(id_key=b"k"), make_redis(id_key=b"k", broadcast=False)
        now = 1000.0
        for step in range(50):
            now += rng.choice((0, 0.001, 0.25, 1.0, 3.0))
            parts = rng.choice(CALLERS)
            buckets = memory.buckets(qs, parts)
            assert redis.buckets(qs, parts) == buckets
            where = (seed, step)
            assert memory.held(qs, buckets, now) == redis.held(qs, buckets, now), where
            if rng.random() < 0.3:
                got = await memory.precheck(qs, buckets, now)
                want = await redis.precheck(qs, buckets, now)
            else:
                records = rng.randint(0, 5)
                ids = [rng.choice("abcdefgh") for _ in range(rng.randint(0, records + 1))]
                got = await memory.account(qs, buckets, records, ids, now)
                want = await redis.account(qs, buckets, records, ids, now)
            assert got == want, where
            assert ratelimit_headers(got) == ratelimit_headers(want), where
        await memory.close()
