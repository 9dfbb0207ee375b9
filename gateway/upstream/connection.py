"""One upstream connection: the response side of HTTP/1.1, parsed by httptools (llhttp).

A :class:`Connection` is an asyncio protocol that reads one response per request
the client starts on it (:meth:`Connection.start`): it collects the head, skips
interim (1xx) responses, buffers body bytes for the reader and says how the
response ended (complete, keep-alive or not, or which error). The pool and the
request side are in :mod:`gateway.upstream.client`; the rules both keep are in
:mod:`gateway.upstream`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final, cast

import aiohttp
import httptools

# Pause reading the socket while this many body bytes wait for the reader.
HIGH_WATER: Final = 1 << 20
# Response head limits (aiohttp's client allows 8190 per line; a whole head of 64 KiB).
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 256


class ResponseError(aiohttp.ClientConnectionError):
    """The upstream's answer could not be parsed as an HTTP response (before its body)."""


class Connection(asyncio.Protocol):
    """One upstream connection: reads one response at a time, for :mod:`.client`."""

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
        "length",
        "loop",
        "on_lost",
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
        # Told when the connection is gone (the pool drops it if it was idle).
        self.on_lost: Callable[[Connection], None] | None = None
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
        self.length: int | None = None  # Content-Length, when the head had one
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
        if self.on_lost is not None:
            self.on_lost(self)

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
        te = length = None
        for name, value in self.raw_headers:
            lname = name.lower()
            if lname == b"transfer-encoding":
                te = value
            elif lname == b"content-length":
                length = value
        # llhttp has refused lengths that are malformed or disagree, and a length with
        # Transfer-Encoding.
        self.length = int(length) if length is not None else None
        if status != 204 and status != 304:
            if te is not None:
                # Chunked when it is the last coding; any other coding runs to EOF.
                self.eof_body = te.rsplit(b",", 1)[-1].strip().lower() != b"chunked"
            elif self.length is not None:
                self.body_left = self.length
            else:
                self.eof_body = True
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
        if self.closed:
            # Gone between the pool's check and now: fail at once, as a disconnect
            # before any response byte (a bodyless request on a reused one is retried).
            self._set_error(aiohttp.ServerDisconnectedError())
            return self.headers_fut
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
