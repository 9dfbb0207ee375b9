"""Connection-level defences around aiohttp's HTTP/1.1 server protocol.

aiohttp gives us header line/field caps and an idle timer (``keepalive_timeout``
counts from connection start and from the end of each response, and closes a
connection that has not delivered a complete request head by then). On top of
that this module adds:

- a **header-read timeout**: once the first byte of a request head arrives, the
  whole head must arrive within ``header_timeout`` (a slow-loris that trickles
  one byte a second is cut off even though it is never "idle");
- a **connection cap** with eviction: at the cap, a new connection first evicts
  the oldest connection that has no request in progress (idle or still sending
  its head); only when every connection is busy with a request is the new one
  refused. A thousand slow-header connections therefore cannot lock normal
  clients out: they are the first to go;
- **problem+json for protocol errors**: a request the parser rejects
  (``Content-Length`` with ``Transfer-Encoding``, bad chunking, oversized
  headers) gets a 400 problem+json body with a request id, not aiohttp's text.

The hooks use three private attributes of aiohttp's ``RequestHandler``
(``_messages``, ``_request_in_progress``, ``_request_count``); the pinned
aiohttp range and ``tests/test_connections.py`` guard them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web, web_protocol

from gateway.problem import problem
from gateway.requestid import new_request_id

log = logging.getLogger("gateway.connections")

# Called with (request, status, reason) for requests that never reach the stages;
# returns the request id the error response carries.
ProtocolErrorHook = Callable[[web.BaseRequest, int, str], str]


class ConnectionLimiter:
    """Tracks open connections; evicts idle ones at the cap."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._open: dict[GatewayRequestHandler, None] = {}  # insertion order = age
        self.evicted = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, handler: GatewayRequestHandler) -> bool:
        if len(self._open) >= self.max_connections:
            victim = next((h for h in self._open if h.evictable()), None)
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            self.release(victim)
            victim.force_close()
        self._open[handler] = None
        return True

    def release(self, handler: GatewayRequestHandler) -> None:
        self._open.pop(handler, None)


class GatewayRequestHandler(web_protocol.RequestHandler):
    def __init__(
        self,
        manager: web.Server,
        *,
        limiter: ConnectionLimiter,
        header_timeout: float,
        on_protocol_error: ProtocolErrorHook | None,
        request_id_header: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._limiter = limiter
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_mark = 0
        self._head_started: float | None = None  # loop time the pending head began
        self._on_protocol_error = on_protocol_error
        self._request_id_header = request_id_header

    # --- state ----------------------------------------------------------------
    def _head_pending(self) -> bool:
        """True while no request is being handled and none is queued."""
        return not self._request_in_progress and not self._messages

    def evictable(self) -> bool:
        return self._head_pending()

    # --- lifecycle hooks ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._limiter.admit(self):
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._limiter.release(self)
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_started is None and self._head_pending():
            self._head_started = self._loop.time()
            self._header_mark = self._request_count
            if self._header_timer is None:
                self._header_timer = self._loop.call_later(
                    self._header_timeout, self._header_expired
                )
        super().data_received(data)
        if self._head_started is not None and self._request_count != self._header_mark:
            # A complete head was parsed. The timer is left to run: on a busy keep-alive
            # connection it re-arms for the next head instead of being created and
            # cancelled for every request.
            self._head_started = None

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        started = self._head_started
        if started is None or self._request_count != self._header_mark:
            return  # no head pending: armed again when the next one begins
        if not self._head_pending():
            return
        left = started + self._header_timeout - self._loop.time()
        if left > 0:  # a later head than the one this timer was set for
            self._header_timer = self._loop.call_later(left, self._header_expired)
        else:
            self.force_close()

    # --- protocol errors as problem+json -------------------------------------
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        # Parser messages can quote the offending bytes: log the class only.
        log.info("protocol error %s (%s)", status, type(exc).__name__ if exc else "-")
        reason = "bad_request" if status == 400 else f"protocol_{status}"
        if self._on_protocol_error is not None:
            request_id = self._on_protocol_error(request, status, reason)
        else:
            request_id = new_request_id()
        detail = "The request is malformed." if status < 500 else None
        resp = problem(status, request_id, detail, headers={self._request_id_header: request_id})
        resp.force_close()
        return resp


class GatewayServer(web.Server):
    """aiohttp's low-level server, building :class:`GatewayRequestHandler` protocols."""

    def __init__(
        self,
        handler: Any,
        *,
        limiter: ConnectionLimiter,
        header_timeout: float,
        request_id_header: str,
        on_protocol_error: ProtocolErrorHook | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.limiter = limiter
        self._header_timeout = header_timeout
        self._request_id_header = request_id_header
        self._on_protocol_error = on_protocol_error

    def __call__(self) -> GatewayRequestHandler:
        return GatewayRequestHandler(
            self,
            loop=self._loop,
            limiter=self.limiter,
            header_timeout=self._header_timeout,
            on_protocol_error=self._on_protocol_error,
            request_id_header=self._request_id_header,
            **self._kwargs,
        )
