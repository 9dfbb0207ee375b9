"""The pipelined Redis connection of the quota path, against a real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.quota.resp import Connection, ReplyError, pack


def test_pack_is_resp() -> None:
    assert pack(("SET", "k€", 12, b"\x00v")) == (
        b"*4\r\n$3\r\nSET\r\n$4\r\nk\xe2\x82\xac\r\n$2\r\n12\r\n$2\r\n\x00v\r\n"
    )


async def test_calls_in_flight_get_their_own_replies(redis_server: Any) -> None:
    conn = Connection(redis_server.url)
    try:
        replies = await asyncio.gather(*(conn.execute("ECHO", f"m{i}") for i in range(200)))
        assert replies == [f"m{i}".encode() for i in range(200)]
    finally:
        conn.close()


async def test_an_abandoned_call_does_not_shift_the_replies(redis_server: Any) -> None:
    conn = Connection(redis_server.url)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await conn.execute("BLPOP", "resp:nothing", "0.3")  # answers nil in 0.3 s
        # Queued behind the abandoned call on the same connection: its reply, not nil.
        assert await conn.execute("ECHO", "after") == b"after"
    finally:
        conn.close()


async def test_error_replies_raise_and_the_connection_goes_on(redis_server: Any) -> None:
    conn = Connection(redis_server.url)
    try:
        with pytest.raises(ReplyError, match="NOSCRIPT"):
            await conn.execute("EVALSHA", "0" * 40, 0)
        assert await conn.execute("PING") == b"PONG"
    finally:
        conn.close()


async def test_reconnects_after_the_server_restarts(own_redis: Any) -> None:
    conn = Connection(own_redis.url)
    try:
        assert await conn.execute("PING") == b"PONG"
        own_redis.stop()
        with pytest.raises((ConnectionError, OSError)):
            await conn.execute("PING")
        with pytest.raises((ConnectionError, OSError)):
            await conn.execute("PING")
        own_redis.start()
        assert await conn.execute("PING") == b"PONG"
    finally:
        conn.close()


async def test_the_url_selects_the_database(redis_server: Any) -> None:
    conn = Connection(redis_server.url.rsplit("/", 1)[0] + "/3")
    r: Any = aioredis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3")
    try:
        await conn.execute("SET", "resp:db", "three")
        assert await r.get("resp:db") == b"three"
    finally:
        conn.close()
        await r.delete("resp:db")
        await r.aclose()


async def test_a_password_is_sent_first(redis_server: Any) -> None:
    conn = Connection(redis_server.url.replace("redis://", "redis://:wrong@"))
    try:
        # This server has no password: AUTH is refused, and so is the connection.
        with pytest.raises(ReplyError, match=r"AUTH|password"):
            await conn.execute("PING")
    finally:
        conn.close()


def test_options_it_cannot_honour_are_refused() -> None:
    with pytest.raises(ValueError, match="ssl_min_version"):
        Connection("rediss://h:6380/0?ssl_min_version=TLSv1_3")
    Connection("redis://h:6379/0?socket_timeout=3&health_check_interval=5")  # redis-py's own
    Connection("rediss://h:6380/0?ssl_cert_reqs=none")
