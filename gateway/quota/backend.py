"""The state-backend interface every quota store implements, and its one error.

Backends hold the windows; ``gateway.quota.engine`` says what they mean. All
backends give the same decisions for the same sequence of calls, and the same
holds (one test suite runs against each): ``held`` answers from what the
process learnt from its calls (and, with Redis, from other processes'
announcements) without I/O. ``buckets`` is the one keying entry point: it gives
a caller's buckets (keyed digests, no I/O), once per request, and every other
call takes them (one per quota, in the quotas' order). ``now`` is seconds;
``None`` means the backend's own clock (the Redis server's clock for Redis, so
gateway hosts with skewed clocks agree; a monotonic clock in memory). Tests
pass explicit times.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.quota.engine import Bucket, Decision, KeyParts
from gateway.rules.model import Quota


class StateUnavailable(Exception):
    """The state store could not answer in time; the route's ``on_failure`` decides."""


class QuotaBackend(Protocol):
    @property
    def healthy(self) -> bool:
        """False after a call failed with :class:`StateUnavailable`, until one succeeds."""
        ...

    def buckets(self, quotas: Sequence[Quota], parts: KeyParts) -> tuple[Bucket, ...]:
        """Where each quota's state lives for the caller ``parts`` (no I/O)."""
        ...

    def held(
        self, quotas: Sequence[Quota], buckets: Sequence[Bucket], now: float | None = None
    ) -> Decision | None:
        """A refusal from what this process already knows (``gateway.quota.holds``), no I/O:
        None unless some quota is known to block a pre-check at ``now``."""
        ...

    async def precheck(
        self, quotas: Sequence[Quota], buckets: Sequence[Bucket], now: float | None = None
    ) -> Decision:
        """Block a caller already at a limit; otherwise count the request."""
        ...

    async def account(
        self,
        quotas: Sequence[Quota],
        buckets: Sequence[Bucket],
        records: int,
        ids: Sequence[str],
        now: float | None = None,
    ) -> Decision:
        """Refuse a response that would exceed a limit; otherwise count it."""
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise :class:`StateUnavailable` otherwise."""
        ...

    async def close(self) -> None: ...


def open_backend(
    redis_url: str | None, *, timeout: float = 0.5, id_key: bytes = b""
) -> QuotaBackend:
    """The backend for ``state:``: Redis when a URL is given, else in-process memory."""
    # Imported here: both modules import this one for the interface and error.
    from gateway.quota.memory import MemoryBackend
    from gateway.quota.redisstore import RedisBackend

    if redis_url is None:
        return MemoryBackend(id_key=id_key)
    return RedisBackend(redis_url, timeout=timeout, id_key=id_key)
