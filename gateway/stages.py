"""The request stages that wrap the forward endpoint (order: see ``gateway.server.STAGES``).

Each stage is thin: it reads the exchange, asks a pure module a question and
either answers the caller itself (a problem+json) or calls the next stage.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web

from gateway.exchange import Exchange, Handler
from gateway.paths import PathError, split_target
from gateway.problem import problem
from gateway.routing import Match, MethodNotAllowed

log = logging.getLogger("gateway")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(value: str | None, generate: str) -> str:
    """Keep a caller's request id only when it is a plain token (it lands in logs)."""
    if value is not None and _SAFE_REQUEST_ID.match(value):
        return value
    return generate


async def guard(ex: Exchange, call_next: Handler) -> web.StreamResponse:
    """Any exception becomes a generic 500 with no upstream bytes and no details."""
    try:
        return await call_next(ex)
    except (ConnectionError, web.HTTPException):
        raise
    except Exception as exc:
        if ex.request.writer.output_size > 0:
            raise  # headers already sent: aiohttp aborts the connection
        log.error(
            "internal error on route %s: %s",
            ex.route.name if ex.route else "-",
            type(exc).__name__,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        ex.deny("fail_closed", "internal_error")
        return problem(500, ex.request_id, "The gateway could not process this request.")


async def observe(ex: Exchange, call_next: Handler) -> web.StreamResponse:
    """Stamp the request id on every response (audit and metrics hook in here)."""
    resp = await call_next(ex)
    if not resp.prepared:
        resp.headers[ex.runtime.config.request_id_header] = ex.request_id
    return resp


async def route(ex: Exchange, call_next: Handler) -> web.StreamResponse:
    """Normalise the path and pick the route: 400 ambiguous, 404 unknown, 405 method."""
    try:
        ex.path, ex.query = split_target(ex.request.raw_path)
    except PathError as exc:
        ex.deny("deny_route", "bad_path")
        return problem(400, ex.request_id, f"Invalid request path: {exc.reason}.")
    found = ex.runtime.router.resolve(ex.path, ex.request.method)
    if isinstance(found, Match):
        ex.route = found.target
        return await call_next(ex)
    if isinstance(found, MethodNotAllowed):
        ex.deny("deny_route", "method_not_allowed")
        return problem(
            405,
            ex.request_id,
            "This method is not allowed on this path.",
            headers={"Allow": ", ".join(found.allow)},
        )
    ex.deny("deny_route", "no_route")
    return problem(404, ex.request_id, "No route matches this path.")
