"""The upstream client: HTTP/1.1 with a keep-alive pool, parsed by httptools (llhttp).

Why not ``aiohttp.ClientSession``: ``make bench`` measured its per-request cost at
roughly a fifth of the gateway's CPU on a masked route (request object, timers,
cookie and redirect machinery, the stream reader) for features a reverse proxy
never uses. This client does only what :mod:`gateway.proxy` needs: send one
request on a pooled connection, hand back status, headers and the body as it
arrives, and say precisely how it failed.

Theory of operation:

- A :class:`UpstreamClient` per upstream holds at most ``max_connections``
  connections. A request takes an idle one (last used first) or opens a new one;
  it goes back to the pool only when its response was read to a clean end and
  both sides agreed to keep it alive. Everything else closes it.
- Failures keep the meanings the proxy maps to answers: ``TimeoutError`` (connect
  timeout, or no bytes for ``read_timeout`` while waiting) → 504; ``OSError`` /
  :class:`aiohttp.ClientConnectionError` (refused, reset, TLS, closed before the
  status line) → 502; :class:`aiohttp.ClientPayloadError` (the body ended early,
  or the framing is broken after the status line) → the caller never gets a
  body that looks complete. A response the parser refuses is never half-used.
- A reused connection that the upstream closed while idle fails before any
  response byte; a request without a body is then retried once on a new
  connection (what browsers and Go's transport do): the upstream never saw it.
- Body bytes are buffered up to :data:`HIGH_WATER`, then the socket stops being
  read until the reader catches up, so a slow caller bounds the memory.
- Header names and values with CR or LF are refused (``ValueError``) before
  anything is written: no header injection through identity claims.
- ``HEAD``: llhttp cannot be told a response has no body, so after a HEAD
  response's headers the connection is not reused.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, cast

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

# Pause reading the socket while this many body bytes wait for the reader.
HIGH_WATER: Final = 1 << 20
# Response head limits (aiohttp's client allows 8190 per line; a whole head of 64 KiB).
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 256
# Idle connections older than this are closed rather than reused (most servers
# keep idle connections 5-75 s; a stale one costs a retry).
IDLE_TIMEOUT: Final = 15.0


class ResponseError(aiohttp.ClientConnectionError):
    """The upstream's answer could not be parsed as an HTTP response (before its body)."""


class _Conn(asyncio.Protocol):
    """One connection; one request/response at a time."""

    __slots__ = (
        "body",
        "body_left",
        "buffered",
        "busy",
        "can_write",
        "closed",
        "done",
        "eof_body",
        "error",
        "head_bytes",
        "head_only",
        "headers_fut",
        "interim",
        "keep_alive",
        "last_used",
        "loop",
        "parser",
        "parser_stale",
        "paused",
        "raw_headers",
        "read_timeout",
        "reason",
        "status",
        "timer",
        "transport",
        "used",
        "waiter",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self.loop = loop
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.busy = False
        self.used = 0  # requests sent on this connection
        self.last_used = 0.0
        self.can_write: asyncio.Future[None] | None = None
        # One parser for the connection's life: llhttp moves on to the next response by
        # itself after a complete keep-alive one (the only kind a reused connection had).
        self.parser = httptools.HttpResponseParser(self)
        self.parser_stale = False
        self.body: deque[bytes] = deque()
        self._reset()

    def _reset(self) -> None:
        self.head_bytes = 0
        self.status = 0
        self.reason = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_fut: asyncio.Future[None] | None = None
        self.interim = False
        self.body.clear()
        self.buffered = 0
        self.done = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.eof_body = False
        self.head_only = False
        # Body bytes still to come of a Content-Length body (-1: not such a body). Once
        # the head is parsed, whole packets of such a body are taken as they are,
        # without the parser's copy (see data_received).
        self.body_left = -1

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but behave as one.)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self._fail(ResponseError("unexpected data from the upstream"))
            return
        if self.done:
            self._retire()
            return
        if self.body_left > 0:
            self._take_body(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ResponseError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            # (An exception raised in a callback arrives wrapped, as the context.)
            if isinstance(exc.__context__, _NextMessage):
                self._retire()
            elif isinstance(exc.__context__, _HeadTooLarge):
                self._fail(ResponseError("the upstream's response head is too large"))
            else:
                self._fail(self._framing_error())

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self.busy and not self.done and self.error is None:
            if self.headers_fut is None or not self.headers_fut.done():
                self._set_error(aiohttp.ServerDisconnectedError())
            elif self.eof_body:
                # No Content-Length and not chunked: the body is whatever came before EOF.
                self.done = True
                self._wake()
            else:
                self._set_error(aiohttp.ClientPayloadError("response body incomplete"))
        fut, self.can_write = self.can_write, None
        if fut is not None and not fut.done():
            fut.set_exception(aiohttp.ServerDisconnectedError())
            fut.exception()  # retrieved: the sender may already be gone

    def pause_writing(self) -> None:
        if self.can_write is None:
            self.can_write = self.loop.create_future()

    def resume_writing(self) -> None:
        fut, self.can_write = self.can_write, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    # --- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:
            raise _NextMessage

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES or len(self.raw_headers) >= MAX_HEADERS:
            raise _HeadTooLarge
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # An interim response (100 Continue, 103 Early Hints): skipped; the final
            # response follows on the same connection.
            self.interim = True
            return
        self.status = status
        self._cancel_timer()  # the head came in time; body waits arm their own
        self.keep_alive = self.parser.should_keep_alive()
        if not (status == 204 or status == 304):
            names = {n.lower() for n, _ in self.raw_headers}
            te = [v for n, v in self.raw_headers if n.lower() == b"transfer-encoding"]
            chunked = bool(te) and te[-1].rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            self.eof_body = not chunked and (bool(te) or b"content-length" not in names)
            if not chunked and not te and b"content-length" in names:
                # llhttp has refused lengths that are malformed or disagree.
                length = [v for n, v in self.raw_headers if n.lower() == b"content-length"]
                self.body_left = int(length[-1])
        if self.head_only:
            # A HEAD response has no body whatever its headers say; llhttp cannot be
            # told, so the message ends here and the connection is not reused.
            self.keep_alive = False
            self.eof_body = False
            self.done = True
        assert self.headers_fut is not None
        if not self.headers_fut.done():
            self.headers_fut.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        if self.body_left > 0:
            self.body_left -= len(body)
        self._add_body(body)

    def _add_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def _take_body(self, data: bytes) -> None:
        """A packet of a Content-Length body after its head: kept as it came (no copy).
        The parser, left mid-body, is replaced before the connection's next request."""
        self.parser_stale = True
        left = self.body_left
        if len(data) <= left:
            self.body_left = left - len(data)
            self._add_body(data)
        else:
            self.body_left = 0
            self._add_body(data[:left])
        if self.body_left == 0:
            self.done = True
            self._wake()
            if len(data) > left:
                self._retire()  # bytes after the body: the response stands, the connection goes

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.status = 0
            self.reason = b""
            self.raw_headers = []
            self.head_bytes = 0
            return
        self.done = True
        self.keep_alive = self.keep_alive and self.parser.should_keep_alive()
        self._wake()

    # --- the request side -----------------------------------------------------------

    def start(self, head_only: bool) -> asyncio.Future[None]:
        if self.used:
            self._reset()
        if self.parser_stale:
            self.parser = httptools.HttpResponseParser(self)
            self.parser_stale = False
        self.used += 1
        self.busy = True
        self.head_only = head_only
        self.headers_fut = self.loop.create_future()
        self._arm()
        return self.headers_fut

    async def drain(self) -> None:
        if self.can_write is not None:
            await self.can_write

    async def read_chunk(self) -> bytes:
        """The next body bytes; ``b""`` at the end of the body."""
        while True:
            if self.body:
                chunk = self.body.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered <= HIGH_WATER // 4:
                    self.paused = False
                    if self.transport is not None and not self.closed:
                        self.transport.resume_reading()
                return chunk
            if self.done:
                return b""
            if self.error is not None:
                raise self.error
            self.waiter = self.loop.create_future()
            self._arm()
            try:
                await self.waiter
            finally:
                self.waiter = None
                self._cancel_timer()

    def reusable(self) -> bool:
        return (
            self.done
            and self.keep_alive
            and self.error is None
            and not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    # --- internals ------------------------------------------------------------------

    def _framing_error(self) -> BaseException:
        if self.headers_fut is not None and self.headers_fut.done():
            return aiohttp.ClientPayloadError("malformed response body")
        return ResponseError("malformed response from the upstream")

    def _retire(self) -> None:
        """More bytes after the whole response (a second response, or junk): the
        response stands as framed, but the connection is not reused."""
        self.keep_alive = False
        self.close()

    def _fail(self, exc: BaseException) -> None:
        self._set_error(exc)
        self.close()

    def _set_error(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        fut = self.headers_fut
        if fut is not None and not fut.done():
            fut.set_exception(exc)
            fut.exception()  # retrieved here: the caller may be gone (cancelled)
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _arm(self) -> None:
        self._cancel_timer()
        self.timer = self.loop.call_later(self.read_timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        self._fail(TimeoutError())


class _HeadTooLarge(Exception):
    pass


class _NextMessage(Exception):
    pass


class UpstreamResponse:
    """Status, headers and the body of one upstream response, as it arrives."""

    __slots__ = ("_client", "_conn", "_released", "content_length", "headers", "reason", "status")

    def __init__(self, conn: _Conn, client: UpstreamClient) -> None:
        self._conn = conn
        self._client = client
        self._released = False
        self.status = conn.status
        self.reason = conn.reason.decode("latin-1")
        headers: CIMultiDict[str] = CIMultiDict(
            [
                (n.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
                for n, v in conn.raw_headers
            ]
        )
        self.headers = CIMultiDictProxy(headers)
        length = headers.get("Content-Length")
        # llhttp has already refused malformed and conflicting lengths.
        self.content_length = int(length) if length is not None and length.isdigit() else None

    async def readany(self) -> bytes:
        """The next body bytes as they came; ``b""`` at the end."""
        return await self._conn.read_chunk()

    async def iter_any(self) -> AsyncIterator[bytes]:
        while chunk := await self._conn.read_chunk():
            yield chunk

    async def read(self) -> bytes:
        """The whole (remaining) body."""
        conn = self._conn
        if conn.done and conn.error is None:
            # The usual small response: it all came with the head.
            data = b"".join(conn.body)
            conn.body.clear()
            conn.buffered = 0
            return data
        chunks = []
        while chunk := await conn.read_chunk():
            chunks.append(chunk)
        return b"".join(chunks)

    def release(self) -> None:
        """Give the connection back (or close it when the response did not end cleanly)."""
        if not self._released:
            self._released = True
            self._client._release(self._conn)


class UpstreamClient:
    """A pool of HTTP/1.1 connections to one upstream origin."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        host_header: str,
        ssl_context: ssl.SSLContext | None,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self._host_line = f"Host: {host_header}\r\n"
        self._max = max_connections
        self._open = 0
        self._idle: list[_Conn] = []
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._conns: set[_Conn] = set()
        self.closed = False

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterator[bytes] | None = None,
    ) -> UpstreamResponse:
        """Send ``method target`` with ``headers`` (and ``body``); the response once its
        head has arrived. Call :meth:`UpstreamResponse.release` when done with it."""
        if self.closed:
            raise aiohttp.ClientConnectionError("the upstream client is closed")
        chunked = body is not None and "Content-Length" not in headers
        head = self._head(method, target, headers, chunked)
        conn, reused = await self._acquire()
        try:
            if body is None:
                try:
                    await self._exchange(conn, head, method == "HEAD")
                except aiohttp.ServerDisconnectedError:
                    if not reused:
                        raise
                    # The upstream closed this idle connection as we reused it and saw
                    # nothing of the request: once more, on a new connection.
                    self._discard(conn)
                    conn = await self._connect()
                    await self._exchange(conn, head, method == "HEAD")
            else:
                await self._exchange_with_body(conn, head, body, chunked)
        except BaseException:
            self._discard(conn)
            raise
        return UpstreamResponse(conn, self)

    async def close(self) -> None:
        self.closed = True
        for conn in list(self._conns):
            conn.close()
        self._idle.clear()
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_exception(aiohttp.ClientConnectionError("the upstream client is closed"))

    # --- internals ------------------------------------------------------------------

    def _head(self, method: str, target: str, headers: CIMultiDict[str], chunked: bool) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\n", self._host_line]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        if chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        # Exactly one CR and one LF per line: a name or value carrying either (or a
        # target with them) would smuggle a header or a second request.
        if text.count("\n") != len(lines) or text.count("\r") != len(lines):
            raise ValueError("CR or LF in an upstream request header")
        return text.encode("utf-8", "surrogateescape")

    async def _exchange(self, conn: _Conn, head: bytes, head_only: bool) -> None:
        headers_fut = conn.start(head_only)
        assert conn.transport is not None
        conn.transport.write(head)
        await headers_fut

    async def _exchange_with_body(
        self, conn: _Conn, head: bytes, body: AsyncIterator[bytes], chunked: bool
    ) -> None:
        headers_fut = conn.start(False)
        transport = conn.transport
        assert transport is not None

        async def send() -> None:
            transport.write(head)
            async for chunk in body:
                if not chunk:
                    continue
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                await conn.drain()
            if chunked:
                transport.write(b"0\r\n\r\n")

        sender = asyncio.ensure_future(send())
        try:
            # The upstream may answer before it has read the whole body (413 early);
            # either way a failing body (too large, too slow) wins over waiting.
            await asyncio.wait((sender, headers_fut), return_when=asyncio.FIRST_COMPLETED)
            if sender.done():
                failed = sender.exception()
                if failed is not None:
                    raise failed
            await headers_fut
            if not sender.done():
                # Answered early: the rest of the body is not wanted, and the
                # connection cannot carry another request.
                sender.cancel()
                conn.keep_alive = False
        except BaseException:
            sender.cancel()
            raise

    async def _acquire(self) -> tuple[_Conn, bool]:
        now = time.monotonic()
        while True:
            while self._idle:
                conn = self._idle.pop()
                if conn.closed or now - conn.last_used > self.idle_timeout:
                    self._discard(conn)
                    continue
                return conn, True
            if self._open < self._max:
                return await self._connect(), False
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        self._open += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop, self.read_timeout),
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context is not None else None,
                )
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        self._conns.add(conn)
        return conn

    def _release(self, conn: _Conn) -> None:
        conn._cancel_timer()
        if conn.reusable() and not self.closed:
            conn.busy = False
            conn.last_used = time.monotonic()
            conn.body.clear()
            self._idle.append(conn)
            self._wake_one()
        else:
            self._discard(conn)

    def _discard(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            self._open -= 1
            self._wake_one()
        conn.close()

    def _wake_one(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return
