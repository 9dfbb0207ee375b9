"""Hostile clients: slow headers, connection floods, ambiguous framing, oversized heads."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import GatewayFactory, UpstreamFactory


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def upstream(upstream_factory: UpstreamFactory) -> str:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _ok)
    return await upstream_factory(app)


def _hostport(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def _raw(url: str, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*_hostport(url))
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_content_length_with_transfer_encoding_is_400_problem(
    upstream: str, gateway_factory: GatewayFactory
) -> None:
    gw = await gateway_factory(
        {"u": {"url": upstream}}, [{"name": "a", "path": "/**", "upstream": "u"}]
    )
    raw = await _raw(
        gw,
        b"POST /x HTTP/1.1\r\nHost: g\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400"))
    assert b"application/problem+json" in head
    problem = orjson.loads(body)
    assert problem["status"] == 400 and problem["request_id"]


async def test_oversized_header_is_rejected(upstream: str, gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(
        {"u": {"url": upstream}},
        [{"name": "a", "path": "/**", "upstream": "u"}],
        limits={"max_header_size": 1024},
    )
    raw = await _raw(gw, b"GET /x HTTP/1.1\r\nHost: g\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
    assert raw.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4"))
    assert b"application/problem+json" in raw


async def _trickle_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Trickle a header byte every 0.1 s (never idle, never complete) for up to 4 s;
    True when the gateway closed the connection."""
    for _ in range(40):
        await asyncio.sleep(0.1)
        try:
            writer.write(b"X")
            await writer.drain()
        except ConnectionError:
            return True
        if reader.at_eof():
            return True
    return await asyncio.wait_for(reader.read(), 5) == b""


async def test_slow_header_connection_is_cut_after_header_timeout(
    upstream: str, gateway_factory: GatewayFactory
) -> None:
    gw = await gateway_factory(
        {"u": {"url": upstream}},
        [{"name": "a", "path": "/**", "upstream": "u"}],
        limits={"header_timeout": 0.5, "idle_timeout": 30},
    )
    reader, writer = await asyncio.open_connection(*_hostport(gw))
    started = time.monotonic()
    writer.write(b"GET /x HTTP/1.1\r\n")
    closed = await _trickle_until_closed(reader, writer)
    writer.close()
    assert closed
    assert time.monotonic() - started < 2.5


async def _one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET /x HTTP/1.1\r\nHost: g\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return head


async def test_keep_alive_heads_each_get_their_own_header_timeout(
    upstream: str, gateway_factory: GatewayFactory
) -> None:
    gw = await gateway_factory(
        {"u": {"url": upstream}},
        [{"name": "a", "path": "/**", "upstream": "u"}],
        limits={"header_timeout": 0.5, "idle_timeout": 30},
    )
    reader, writer = await asyncio.open_connection(*_hostport(gw))
    # Prompt heads for longer than header_timeout in all: the connection stays up.
    for _ in range(8):
        assert (await _one_request(reader, writer)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.15)
    # Then a head that trickles: cut off, as on a fresh connection.
    writer.write(b"GET /x HTTP/1.1\r\n")
    closed = await _trickle_until_closed(reader, writer)
    writer.close()
    assert closed


async def test_idle_connection_is_closed_after_idle_timeout(
    upstream: str, gateway_factory: GatewayFactory
) -> None:
    gw = await gateway_factory(
        {"u": {"url": upstream}},
        [{"name": "a", "path": "/**", "upstream": "u"}],
        limits={"idle_timeout": 0.3},
    )
    reader, writer = await asyncio.open_connection(*_hostport(gw))
    assert await asyncio.wait_for(reader.read(), 3) == b""
    writer.close()


async def _slow_loris(url: str, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection(*_hostport(url))
        writer.write(b"GET /x HTTP/1.1\r\nHost: g\r\n")
        writers.append(writer)
    await asyncio.gather(*(w.drain() for w in writers), return_exceptions=True)
    return writers


async def test_thousand_slow_header_connections_do_not_block_normal_clients(
    upstream: str, gateway_factory: GatewayFactory
) -> None:
    gw = await gateway_factory(
        {"u": {"url": upstream}},
        [{"name": "a", "path": "/**", "upstream": "u"}],
        limits={"max_connections": 200, "header_timeout": 30, "idle_timeout": 30},
    )
    writers = await _slow_loris(gw, 1000)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(5):
                async with s.get(gw + "/ok", timeout=aiohttp.ClientTimeout(total=3)) as resp:
                    assert resp.status == 200
    finally:
        for w in writers:
            w.close()


async def test_cap_refuses_new_connections_only_when_all_are_busy(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/hold", hold)
    url = await upstream_factory(app)
    gw = await gateway_factory(
        {"u": {"url": url, "timeout": 10}},
        [{"name": "a", "path": "/**", "upstream": "u"}],
        limits={"max_connections": 3},
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        busy = [asyncio.create_task(s.get(gw + "/hold")) for _ in range(3)]
        await asyncio.sleep(0.3)
        with pytest.raises(aiohttp.ClientError):
            async with s.get(gw + "/hold", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                await resp.read()
        release.set()
        for t in busy:
            resp = await t
            assert resp.status == 200
            resp.release()
