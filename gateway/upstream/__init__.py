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
  both sides agreed to keep it alive. Everything else closes it. An idle
  connection is closed after ``idle_timeout`` (a timer, so a burst's extra
  connections do not stay open upstream when traffic stops), and one the
  upstream closes leaves the pool at once.
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
- A ``101`` is refused like a malformed response (the gateway never asks to
  upgrade), whether or not it names a protocol.
- ``HEAD``: llhttp cannot be told a response has no body, so after a HEAD
  response's headers the connection is not reused.

The package: :mod:`.connection` (one connection reading responses) and
:mod:`.client` (the pool, requests, the response handle).
"""

from gateway.upstream.client import IDLE_TIMEOUT, UpstreamClient, UpstreamResponse
from gateway.upstream.connection import HIGH_WATER, ResponseError

__all__ = ["HIGH_WATER", "IDLE_TIMEOUT", "ResponseError", "UpstreamClient", "UpstreamResponse"]
