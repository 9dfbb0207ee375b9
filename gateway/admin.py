"""The admin listener: ``/metrics``, ``/healthz``, ``/readyz`` and token-guarded ``/admin/*``.

Rules:

- ``/metrics``, ``/healthz`` and ``/readyz`` are open: bind the admin listener
  to a private address (PRODUCT.md). ``/healthz`` says the process is alive;
  ``/readyz`` asks ``ready()`` and answers 503 with the failing check names.
- ``/admin/*`` needs ``Authorization: Bearer <token>``, compared in constant
  time. No token configured (or an empty one) → 503 "admin disabled", so an
  unset environment variable never means "open". A wrong or missing token →
  401 problem+json with ``WWW-Authenticate: Bearer``.
- ``POST /admin/reload`` answers whatever ``reload()`` returns (200 with the
  new rules version, or 4xx/5xx with the errors; the old rules keep serving).
- ``GET /admin/audit/stream`` is a server-sent-events stream of audit records
  from an :class:`~gateway.audit.broadcast.AuditBroadcaster`, filtered by
  ``subject``, ``route`` and ``decision`` query parameters (repeatable: any of
  the values). A client that falls behind loses records and is told so with an
  ``event: dropped`` message; a comment line every ``keepalive`` seconds keeps
  proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.audit.broadcast import FILTER_KEYS, AuditBroadcaster, TooManySubscribers
from gateway.metrics import CONTENT_TYPE
from gateway.problem import problem

MetricsBody = Callable[[], bytes]
ReadyCheck = Callable[[], tuple[bool, list[str]]]
Health = Callable[[], dict[str, Any]]
Reload = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]

TOKEN_KEY: Final = web.AppKey("admin_token", bytes)
METRICS_KEY: Final = web.AppKey[MetricsBody]("admin_metrics_body")
READY_KEY: Final = web.AppKey[ReadyCheck]("admin_ready")
RELOAD_KEY: Final = web.AppKey[Reload]("admin_reload")
BROADCAST_KEY: Final = web.AppKey("admin_audit_broadcast", AuditBroadcaster)
KEEPALIVE_KEY: Final = web.AppKey("admin_sse_keepalive", float)
HEALTH_KEY: Final = web.AppKey[Health]("admin_health")

ADMIN_PREFIX: Final = "/admin"


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _request_id() -> str:
    return uuid.uuid4().hex


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path != ADMIN_PREFIX and not path.startswith(ADMIN_PREFIX + "/"):
        return await handler(request)
    expected = request.app.get(TOKEN_KEY)
    if not expected:
        return problem(503, _request_id(), "The admin API is disabled: no admin token is set.")
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    # compare_digest on bytes: constant time in the token's length, whatever it holds.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode("utf-8", "surrogateescape"), expected
    ):
        return problem(
            401,
            _request_id(),
            "A valid admin bearer token is required.",
            headers={"WWW-Authenticate": 'Bearer realm="gateway-admin"'},
        )
    return await handler(request)


async def handle_metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY]()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def handle_healthz(request: web.Request) -> web.Response:
    health = request.app.get(HEALTH_KEY)
    return _json(health() if health is not None else {"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    ok, failing = request.app[READY_KEY]()
    if ok:
        return _json({"status": "ready"})
    return _json({"status": "unavailable", "failing": failing}, status=503)


async def handle_reload(request: web.Request) -> web.Response:
    status, body = await request.app[RELOAD_KEY]()
    return _json(body, status=status)


async def handle_audit_stream(request: web.Request) -> web.StreamResponse:
    broadcaster = request.app[BROADCAST_KEY]
    filters = {k: request.query.getall(k) for k in FILTER_KEYS if k in request.query}
    try:
        sub = broadcaster.subscribe(filters)
    except TooManySubscribers:
        return problem(503, _request_id(), "Too many audit stream clients.")
    keepalive = request.app[KEEPALIVE_KEY]
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
        }
    )
    try:
        await resp.prepare(request)
        await resp.write(b": audit stream\n\n")
        while True:
            try:
                async with asyncio.timeout(keepalive):
                    line = await sub.get()
            except TimeoutError:
                await resp.write(b": keepalive\n\n")
                continue
            if line is None:
                break  # the broadcaster closed: the server is stopping
            dropped = sub.take_dropped()
            if dropped:
                await resp.write(b"event: dropped\ndata: %d\n\n" % dropped)
            await resp.write(b"event: audit\ndata: " + line + b"\n\n")
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away
    finally:
        broadcaster.unsubscribe(sub)
    return resp


async def _close_streams(app: web.Application) -> None:
    # Ends open SSE responses so that shutdown does not wait for their timeout.
    app[BROADCAST_KEY].close()


def create_admin_app(
    *,
    token: str | None,
    metrics_body: MetricsBody,
    ready: ReadyCheck,
    reload: Reload,
    audit_broadcast: AuditBroadcaster,
    sse_keepalive: float = 15.0,
    health: Health | None = None,
) -> web.Application:
    """The admin listener's application (serve it on ``admin_listen``).

    ``health`` (optional) gives the ``/healthz`` body, which is always a 200:
    the supervisor of ``workers: N`` lists its workers there.
    """
    app = web.Application(middlewares=[admin_auth])
    app[TOKEN_KEY] = token.encode() if token else b""
    app[METRICS_KEY] = metrics_body
    app[READY_KEY] = ready
    app[RELOAD_KEY] = reload
    app[BROADCAST_KEY] = audit_broadcast
    app[KEEPALIVE_KEY] = sse_keepalive
    if health is not None:
        app[HEALTH_KEY] = health
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_post("/admin/reload", handle_reload)
    app.router.add_get("/admin/audit/stream", handle_audit_stream)
    app.on_shutdown.append(_close_streams)
    return app
