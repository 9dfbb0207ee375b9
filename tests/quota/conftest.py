"""Backends for the quota tests: the shared suite runs against each of them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.quota import MemoryBackend, QuotaBackend, RedisBackend

MakeRedis = Callable[..., RedisBackend]


@pytest.fixture
async def make_redis(redis_server: Any) -> AsyncIterator[MakeRedis]:
    """RedisBackends on the shared server, each on its own key prefix (closed after)."""
    made: list[RedisBackend] = []

    def make(url: str | None = None, **kwargs: Any) -> RedisBackend:
        kwargs.setdefault("timeout", 1.0)
        kwargs.setdefault("prefix", f"t{uuid.uuid4().hex[:12]}:")
        b = RedisBackend(url or redis_server.url, **kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        await b.close()


@pytest.fixture(params=["memory", "redis"])
async def backend(
    request: pytest.FixtureRequest, make_redis: MakeRedis
) -> AsyncIterator[QuotaBackend]:
    if request.param == "memory":
        b = MemoryBackend(id_key=b"k")
        yield b
        await b.close()
    else:
        yield make_redis(id_key=b"k")


@pytest.fixture
def own_redis(redis_server: Any, tmp_path: Path) -> Iterator[Any]:
    """A private redis-server for outage tests (stopping the shared one breaks others)."""
    server = type(redis_server)(tmp_path)
    server.start()
    yield server
    server.stop()
