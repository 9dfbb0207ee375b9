"""The upstream client (gateway.upstream): framing, the pool, and how it fails.

Upstreams are real aiohttp apps on real sockets, or raw asyncio servers on real
sockets where the point is a response aiohttp would never send.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.upstream import HIGH_WATER, ResponseError, UpstreamClient
from tests.conftest import free_port, start_app

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def client_for(port: int, **kw: float) -> UpstreamClient:
    opts: dict[str, float] = {"max_connections": 4, "connect_timeout": 2.0, "read_timeout": 5.0}
    opts.update(kw)
    return UpstreamClient(
        "127.0.0.1",
        port,
        host_header=f"127.0.0.1:{port}",
        ssl_context=None,
        max_connections=int(opts["max_connections"]),
        connect_timeout=opts["connect_timeout"],
        read_timeout=opts["read_timeout"],
        idle_timeout=opts.get("idle_timeout", 15.0),
    )


@asynccontextmanager
async def raw_upstream(
    reply: Reply, **kw: float
) -> AsyncIterator[tuple[UpstreamClient, list[int]]]:
    """A raw TCP upstream; yields a client for it and a list counting connections accepted."""
    accepted: list[int] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await reply(r, w)
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    client = client_for(server.sockets[0].getsockname()[1], **kw)
    try:
        yield client, accepted
    finally:
        await client.close()
        server.close()


@asynccontextmanager
async def app_upstream(app: web.Application, **kw: float) -> AsyncIterator[UpstreamClient]:
    """A real aiohttp upstream app; yields a client for it."""
    runner, url = await start_app(app)
    client = client_for(int(url.rsplit(":", 1)[1]), **kw)
    try:
        yield client
    finally:
        await client.close()
        await runner.cleanup()


def answering(answer: bytes) -> Reply:
    """An upstream that reads one request head and writes ``answer``."""

    async def reply(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_head(r)
        w.write(answer)
        await w.drain()

    return reply


async def read_head(r: asyncio.StreamReader) -> bytes:
    return await r.readuntil(b"\r\n\r\n")


async def fetch(client: UpstreamClient, target: str = "/", method: str = "GET") -> bytes:
    resp = await client.request(method, target, CIMultiDict())
    try:
        return await resp.read()
    finally:
        resp.release()


async def test_keep_alive_reuses_one_connection_and_sends_exactly_the_head() -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []
    peers: set[tuple[str, int]] = set()

    async def echo(request: web.Request) -> web.Response:
        seen.append((request.method, request.raw_path, dict(request.headers)))
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.json_response({"n": len(seen)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    async with app_upstream(app) as client:
        port = client.port
        for i in range(3):
            resp = await client.request(
                "GET", f"/a%2Fb?x={i}&y", CIMultiDict([("X-One", "1"), ("x-two", "2")])
            )
            assert resp.status == 200 and resp.reason == "OK"
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            assert resp.content_length == len(await resp.read())
            resp.release()
        assert len(peers) == 1
        method, path, headers = seen[-1]
        assert (method, path) == ("GET", "/a%2Fb?x=2&y")
        # Nothing invented: no User-Agent, Accept or Accept-Encoding of our own.
        assert headers == {"Host": f"127.0.0.1:{port}", "X-One": "1", "x-two": "2"}


async def test_chunked_and_eof_delimited_bodies_are_read_whole() -> None:
    async def chunked(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        w.write(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        await w.drain()
        await read_head(r)  # a second request on the same connection
        w.write(b"HTTP/1.0 200 OK\r\n\r\nuntil-eof")  # no length: the body ends at EOF
        await w.drain()

    async with raw_upstream(chunked) as (client, accepted):
        assert await fetch(client) == b"abcde"
        assert await fetch(client) == b"until-eof"
        assert len(accepted) == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcde\r\n0\r\n\r\n",
    ],
    ids=["short-length", "chunked-no-end", "bad-chunk-size"],
)
async def test_a_body_that_ends_early_or_breaks_its_framing_is_a_payload_error(
    answer: bytes,
) -> None:
    async with raw_upstream(answering(answer)) as (client, _):
        with pytest.raises(aiohttp.ClientPayloadError):
            await fetch(client)


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"",  # closed without a word
        # The gateway never asks to upgrade: a 101, with or without Upgrade, is refused.
        b"HTTP/1.1 101 Switching Protocols\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["garbage", "two-lengths", "length-and-chunked", "huge-head", "closed", "101", "upgrade"],
)
async def test_a_response_that_is_not_clean_http_fails_before_any_body(answer: bytes) -> None:
    async with raw_upstream(answering(answer)) as (client, _):
        with pytest.raises(aiohttp.ClientConnectionError) as info:
            await client.request("GET", "/", CIMultiDict())
        assert isinstance(info.value, (ResponseError, aiohttp.ServerDisconnectedError))


async def test_interim_responses_are_skipped() -> None:
    async def reply(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        w.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()

    async with raw_upstream(reply) as (client, _):
        resp = await client.request("GET", "/", CIMultiDict())
        assert (resp.status, "Link" in resp.headers, await resp.read()) == (201, False, b"ok")
        resp.release()


async def test_head_responses_have_no_body_and_are_not_reused() -> None:
    async def reply(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await w.drain()
        await r.read()  # until the client closes

    async with raw_upstream(reply) as (client, accepted):
        assert await fetch(client, method="HEAD") == b""
        assert await fetch(client, method="HEAD") == b""
        assert len(accepted) == 2


async def test_a_connection_closed_while_idle_is_retried_once_for_a_bodyless_request() -> None:
    async def reply(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_head(r)
        # Says keep-alive, then closes without a word after the request's answer.
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        await r.read(1)  # the next request's first byte: close before answering it

    async with raw_upstream(reply) as (client, accepted):
        assert await fetch(client) == b"ok"
        assert await fetch(client) == b"ok"  # reused, dropped, retried on a new one
        assert len(accepted) == 2


async def test_crlf_in_a_header_is_refused_before_anything_is_sent() -> None:
    async def reply(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()

    async with raw_upstream(reply) as (client, accepted):
        for headers in (
            [("X-Sub", "alice\r\nX-Clearance: secret")],
            [("X-Sub\nX", "alice")],
        ):
            with pytest.raises(ValueError):
                await client.request("GET", "/", CIMultiDict(headers))
        assert accepted == []


async def test_no_answer_in_time_is_a_timeout_and_refused_is_an_oserror() -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()

    async with raw_upstream(silent, read_timeout=0.2) as (client, _):
        with pytest.raises(TimeoutError):
            await client.request("GET", "/", CIMultiDict())
    closed = client_for(free_port())
    with pytest.raises(OSError):
        await closed.request("GET", "/", CIMultiDict())


async def test_a_body_that_stops_mid_way_times_out() -> None:
    async def stalls(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await w.drain()
        await r.read()

    async with raw_upstream(stalls, read_timeout=0.2) as (client, _):
        with pytest.raises(TimeoutError):
            await fetch(client)


async def test_the_pool_holds_at_most_max_connections() -> None:
    in_flight = 0
    peak = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response(text="x")

    app = web.Application()
    app.router.add_get("/", slow)
    async with app_upstream(app, max_connections=2) as client:
        bodies = await asyncio.gather(*(fetch(client) for _ in range(6)))
        assert bodies == [b"x"] * 6 and peak == 2


def serving(closed: list[int]) -> Reply:
    """A keep-alive upstream answering ``ok`` to every request; counts connections
    closed by the client into ``closed``."""

    async def reply(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_head(r)
            except asyncio.IncompleteReadError:
                closed.append(1)
                return
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()

    return reply


async def test_idle_connections_are_closed_after_idle_timeout_with_no_further_requests() -> None:
    closed: list[int] = []
    async with raw_upstream(serving(closed), idle_timeout=0.2) as (client, accepted):
        assert await asyncio.gather(*(fetch(client) for _ in range(3))) == [b"ok"] * 3
        assert len(accepted) == 3 and closed == []
        await asyncio.sleep(0.1)
        # One of them, used again: it expires later, so the reaper must come back for it.
        assert await fetch(client) == b"ok"
        for _ in range(300):
            if len(closed) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(closed) == 3 and client._open == 0 and not client._idle
        assert len(accepted) == 3


async def test_a_connection_the_upstream_closes_while_idle_leaves_the_pool_at_once() -> None:
    async def once(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()  # then closes: keep-alive said, not meant

    async with raw_upstream(once) as (client, accepted):
        assert await fetch(client) == b"ok"
        for _ in range(100):
            if client._open == 0:
                break
            await asyncio.sleep(0.01)
        assert client._open == 0 and not client._idle
        assert await fetch(client) == b"ok"  # a new connection, no retry needed
        assert len(accepted) == 2


async def test_request_bodies_go_with_their_length_or_chunked() -> None:
    got: list[tuple[str | None, str | None, bytes]] = []

    async def sink(request: web.Request) -> web.Response:
        body = await request.read()
        te = request.headers.get("Transfer-Encoding")
        got.append((request.headers.get("Content-Length"), te, body))
        return web.Response(text="ok")

    async def parts() -> AsyncIterator[bytes]:
        for p in (b"ab", b"", b"cde"):
            yield p

    app = web.Application()
    app.router.add_post("/", sink)
    async with app_upstream(app) as client:
        for headers in (CIMultiDict({"Content-Length": "5"}), CIMultiDict()):
            resp = await client.request("POST", "/", headers, parts())
            assert await resp.read() == b"ok"
            resp.release()
        assert got == [("5", None, b"abcde"), (None, "chunked", b"abcde")]


async def test_a_failing_request_body_surfaces_its_own_exception() -> None:
    class Stop(Exception):
        pass

    async def sink(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    async def parts() -> AsyncIterator[bytes]:
        yield b"ab"
        raise Stop

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", sink)
    app.router.add_get("/", hello)
    async with app_upstream(app) as client:
        with pytest.raises(Stop):
            await client.request("POST", "/", CIMultiDict(), parts())
        assert await fetch(client, method="GET") == b"ok"  # the pool is still usable


async def test_a_large_body_streams_through_a_slow_reader_with_bounded_buffering() -> None:
    size = 8 * HIGH_WATER

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        block = b"x" * 65536
        for _ in range(size // len(block)):
            await resp.write(block)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", big)
    async with app_upstream(app) as client:
        resp = await client.request("GET", "/", CIMultiDict())
        total = 0
        conn = resp._conn
        while chunk := await resp.readany():
            total += len(chunk)
            # What waits in the client never grows far past the high-water mark.
            assert conn.buffered <= HIGH_WATER + 2 * 1024 * 1024
            await asyncio.sleep(0.001)
        assert total == size
        resp.release()


async def test_a_second_response_in_the_same_packet_neither_merges_nor_is_reused() -> None:
    async def reply(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_head(r)
        w.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\nContent-Length: 4\r\n\r\nevil"
        )
        await w.drain()
        await r.read()

    async with raw_upstream(reply) as (client, accepted):
        for _ in range(2):
            resp = await client.request("GET", "/", CIMultiDict())
            assert "X-Smuggled" not in resp.headers and await resp.read() == b"ok"
            resp.release()
        assert len(accepted) == 2  # the first connection was not reused


async def test_a_length_body_in_later_packets_is_taken_whole_and_the_connection_reused() -> None:
    async def reply(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
        for part in (b"def", b"ghi"):  # the rest in packets of their own
            await w.drain()
            await asyncio.sleep(0.02)
            w.write(part)
        await w.drain()
        await read_head(r)  # the next request, parsed afresh on the same connection
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        await w.drain()
        await r.read()

    async with raw_upstream(reply) as (client, accepted):
        assert await fetch(client) == b"abcdefghi"
        assert await fetch(client) == b"ok"
        assert len(accepted) == 1


@pytest.mark.parametrize(
    ("tail", "outcome"),
    [(b"ghiEXTRA", b"abcdefghi"), (b"gh", aiohttp.ClientPayloadError)],
    ids=["bytes-after-the-body", "closed-short"],
)
async def test_a_length_body_across_packets_ends_exactly_at_its_length(
    tail: bytes, outcome: bytes | type[Exception]
) -> None:
    async def reply(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_head(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(b"def")
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(tail)
        await w.drain()

    async with raw_upstream(reply) as (client, accepted):
        if isinstance(outcome, bytes):
            assert await fetch(client) == outcome
            assert await fetch(client) == outcome  # not on the connection that said more
            assert len(accepted) == 2
        else:
            with pytest.raises(outcome):
                await fetch(client)
