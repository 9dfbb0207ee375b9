"""Quota micro-benchmark: ``account()`` calls per second, memory and Redis.

Measured, not asserted (``python -m gateway.quota.bench [REDIS_URL]``; the
end-to-end figures are ``make bench``'s). Each call accounts a 20-record
response with 20 ids for one of 100 callers under a quota with ``max_records``
and ``max_distinct`` high enough never to block, so the numbers are the
steady-state cost of the accept path. Redis is measured one call at a time
(latency bound: one round trip each) and with 32 calls in flight (throughput
through the one pipelined connection).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from gateway.quota.backend import QuotaBackend
from gateway.quota.engine import KeyParts
from gateway.quota.memory import MemoryBackend
from gateway.quota.redisstore import RedisBackend
from gateway.rules.model import Quota

QUOTA = Quota("bench", "subject", 3600, {"records": 10**8}, {"records": 10**9, "distinct": 10**9})


async def _rate(backend: QuotaBackend, calls: int, concurrency: int) -> float:
    # Keyed once per caller, as the request path keys once per request.
    callers = [
        backend.buckets((QUOTA,), KeyParts(f"user-{i}", "10.0.0.1", "customers"))
        for i in range(100)
    ]
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            ids = [f"c{(i * 20 + j) % 50_000}" for j in range(20)]
            await backend.account((QUOTA,), callers[i % 100], 20, ids, now=1000.0 + i / 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - start)


async def _bench(redis_url: str | None, calls: int) -> dict[str, float]:
    out = {"memory_account_per_s": await _rate(MemoryBackend(), calls, 1)}
    if redis_url is not None:
        backend = RedisBackend(redis_url, timeout=2.0, prefix=f"bench:{uuid.uuid4().hex}:")
        try:
            out["redis_account_per_s"] = await _rate(backend, calls, 1)
            out["redis_account_concurrent32_per_s"] = await _rate(backend, calls, 32)
        finally:
            await backend.close()
    return out


def bench_quota(redis_url: str | None, *, calls: int = 2000) -> dict[str, float]:
    """Calls/s of ``account()``: memory always, Redis when a URL is given.

    Keys are written under a fresh ``bench:<uuid>:`` prefix and expire after
    the quota window (1 h); point it at a scratch Redis, not production.
    """
    return asyncio.run(_bench(redis_url, calls))


if __name__ == "__main__":  # pragma: no cover - manual use
    for name, value in bench_quota(sys.argv[1] if len(sys.argv) > 1 else None).items():
        print(f"{name}: {value:,.0f}")
