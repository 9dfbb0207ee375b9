"""Memory and Redis, driven through the same random calls, decide exactly alike.

The memory backend is the definition; the Redis script is an independent
implementation of the engine's rules, and the memory backend takes shortcuts (see
its ``account``: which ids are new is looked up only near ``max_distinct``). Small
limits and windows keep most calls near a limit, so both sides of every shortcut
are taken. Quota sets come in three shapes: all on the subject's tag, all on the
address's tag, and spanning both (one script per tag in Redis, the earlier
group's write undone when a later one refuses). Every 20 calls the rules are
reloaded with new maxima, so usage is also seen over a lowered max.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

from gateway.quota import KeyParts, MemoryBackend, RedisBackend, ratelimit_headers
from gateway.rules.model import Quota

MakeRedis = Callable[..., RedisBackend]  # the make_redis fixture (conftest)
CALLERS = (
    KeyParts("alice", "10.0.0.1", "customers"),
    KeyParts("alice", "10.0.0.1", "accounts"),
    KeyParts("bob", "10.0.0.1", "accounts"),
    KeyParts(None, "10.0.0.2", "customers"),
)
SHAPES = ("subject", "client_ip", "both")
# Per shape; e.g. QUOTA_SEEDS=200 QUOTA_STEPS=100 for a longer search.
SEEDS = int(os.environ.get("QUOTA_SEEDS", "40"))
STEPS = int(os.environ.get("QUOTA_STEPS", "50"))


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


def _quotas(rng: random.Random, shape: str) -> tuple[Quota, ...]:
    if shape != "both":
        return tuple(_quota(rng, f"q{i}", shape) for i in range(rng.randint(1, 3)))
    # At least one quota on each tag, in any order (the order quotas are reported
    # and ties are broken in is the file's, not the tags').
    pers = ["subject", "client_ip"] + [
        rng.choice(("subject", "client_ip")) for _ in range(rng.randint(0, 2))
    ]
    rng.shuffle(pers)
    return tuple(_quota(rng, f"q{i}", per) for i, per in enumerate(pers))


def _reloaded(rng: random.Random, q: Quota) -> Quota:
    new = _quota(rng, q.name, q.per)
    return Quota(q.name, q.per, q.window, new.alerts, new.limits)


@pytest.mark.parametrize("shape", SHAPES)
async def test_memory_decides_as_redis_does(make_redis: MakeRedis, shape: str) -> None:
    # Seeds differ per shape (an offset), so every shape sees its own sequences.
    for seed in range(SHAPES.index(shape) * 100_000, SHAPES.index(shape) * 100_000 + SEEDS):
        rng = random.Random(seed)
        qs = _quotas(rng, shape)
        memory, redis = MemoryBackend(id_key=b"k"), make_redis(id_key=b"k", broadcast=False)
        now = 1000.0
        for step in range(STEPS):
            now += rng.choice((0, 0.0004, 0.001, 0.25, 0.999, 1.0, 3.0))
            if step % 20 == 19:
                # A reload: new maxima and alerts, the same names, kinds and windows. (A
                # longer window is left out: memory may already have dropped a bucket
                # idle for the old window that Redis keeps until its keys' expiry, in
                # real time; both forget it then.)
                qs = tuple(_reloaded(rng, q) for q in qs)
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
                ids = [rng.choice("abcdefgh") for _ in range(rng.randint(0, records + 2))]
                got = await memory.account(qs, buckets, records, ids, now)
                want = await redis.account(qs, buckets, records, ids, now)
            assert got == want, where
            assert ratelimit_headers(got) == ratelimit_headers(want), where
        await memory.close()
