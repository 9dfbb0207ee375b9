"""The upstream client: a keep-alive pool per upstream, requests written, responses handed on.

See :mod:`gateway.upstream` for the rules; :mod:`gateway.upstream.connection`
reads the responses.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.upstream.connection import Connection

# Idle connections older than this are closed rather than reused (most servers
# keep idle connections 5-75 s; a stale one costs a retry).
IDLE_TIMEOUT: Final = 15.0


class UpstreamResponse:
    """Status, headers and the body of one upstream response, as it arrives."""

    __slots__ = ("_client", "_conn", "_released", "content_length", "headers", "reason", "status")

    def __init__(self, conn: Connection, client: UpstreamClient) -> None:
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
        self.content_length = conn.length

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
        # Idle connections, oldest first: taken from the right (last used), expired
        # from the left.
        self._idle: deque[Connection] = deque()
        self._reaper: asyncio.TimerHandle | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._conns: set[Connection] = set()
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
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
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

    async def _exchange(self, conn: Connection, head: bytes, head_only: bool) -> None:
        headers_fut = conn.start(head_only)
        assert conn.transport is not None
        conn.transport.write(head)
        await headers_fut

    async def _exchange_with_body(
        self, conn: Connection, head: bytes, body: AsyncIterator[bytes], chunked: bool
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

    async def _acquire(self) -> tuple[Connection, bool]:
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

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        self._open += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, self.read_timeout),
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
        conn.on_lost = self._lost
        return conn

    def _release(self, conn: Connection) -> None:
        conn._cancel_timer()
        if conn.reusable() and not self.closed:
            conn.busy = False
            conn.last_used = time.monotonic()
            conn.body.clear()
            self._idle.append(conn)
            if self._reaper is None:
                self._reaper = asyncio.get_running_loop().call_later(self.idle_timeout, self._reap)
            self._wake_one()
        else:
            self._discard(conn)

    def _reap(self) -> None:
        """Close idle connections past ``idle_timeout``, oldest first, whether or not
        requests come: a burst's extra connections must not stay open upstream."""
        self._reaper = None
        idle = self._idle
        now = time.monotonic()
        while idle and now - idle[0].last_used >= self.idle_timeout:
            self._discard(idle.popleft())
        if idle and not self.closed:
            wait = idle[0].last_used + self.idle_timeout - now
            self._reaper = asyncio.get_running_loop().call_later(wait, self._reap)

    def _lost(self, conn: Connection) -> None:
        """The upstream closed ``conn``. An idle one leaves the pool now; a busy one is
        the request's to fail or finish (it then discards it)."""
        if conn.busy or conn not in self._conns:
            return
        if conn in self._idle:
            self._idle.remove(conn)
        self._discard(conn)

    def _discard(self, conn: Connection) -> None:
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
