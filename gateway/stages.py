"""The request stages that wrap the forward endpoint (order: see ``gateway.server.STAGES``).

Each stage is thin: it reads the exchange, asks a pure module a question and
either answers the caller itself (a problem+json) or calls the next stage.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

from aiohttp import web

from gateway.auth.conditions import allowed
from gateway.auth.verify import AuthError
from gateway.exchange import Exchange, Handler
from gateway.paths import PathError, split_target
from gateway.problem import problem
from gateway.query import QueryError, clamp_page_size
from gateway.requestid import new_request_id
from gateway.routing import Match, MethodNotAllowed
from gateway.trail import leave_trace

log = logging.getLogger("gateway")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(value: str | None) -> str:
    """Keep a caller's request id only when it is a plain token (it lands in logs);
    otherwise a new one."""
    if value is not None and _SAFE_REQUEST_ID.match(value):
        return value
    return new_request_id()


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
    """Stamp the request id on every response; leave exactly one trace per request."""
    status = 500
    try:
        resp = await call_next(ex)
        status = resp.status
        if not resp.prepared:
            resp.headers[ex.runtime.config.request_id_header] = ex.request_id
            resp.headers.update(ex.response_headers)
        return resp
    except BaseException:
        # Aborted mid-body (the status line already went out) or cancelled.
        status = ex.upstream_status or 500
        if ex.decision == "allow":
            ex.deny("upstream_error", "aborted")
        raise
    finally:
        leave_trace(ex, status, ex.runtime.audit)


async def audit_gate(ex: Exchange, call_next: Handler) -> web.StreamResponse:
    """``audit: required``: no trace, no access (503 while the trail cannot be written)."""
    writer = ex.runtime.audit
    if writer is not None and not writer.writable():
        ex.deny("unavailable", "audit_unavailable")
        return problem(
            503, ex.request_id, "The audit trail is unavailable.", headers={"Retry-After": "5"}
        )
    return await call_next(ex)


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
        page = ex.route.config.page_size
        if page is not None:
            try:
                ex.query = clamp_page_size(ex.query, page.param, page.max)
            except QueryError as exc:
                ex.deny("deny_route", "bad_query")
                return problem(400, ex.request_id, f"Invalid query: {exc}.")
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


async def authenticate(ex: Exchange, call_next: Handler) -> web.StreamResponse:
    """Resolve the caller: a verified bearer token, or anonymous on ``auth: none`` routes."""
    assert ex.route is not None
    auth = ex.runtime.auth
    if ex.route.config.auth == "none" or auth is None:
        # (auth is None only with auth: none routes: the loader refuses anything else.)
        ex.principal = ex.runtime.anonymous
        return await call_next(ex)
    try:
        ex.principal = await auth.authenticate(ex.request.headers.getall("Authorization", []))
    except AuthError as exc:
        ex.deny("deny_auth", exc.reason)
        headers: dict[str, str] = {}
        if exc.www_authenticate is not None:
            headers["WWW-Authenticate"] = exc.www_authenticate
        if exc.retry_after is not None:
            headers["Retry-After"] = str(int(exc.retry_after))
        return problem(exc.status, ex.request_id, exc.description, headers=headers)
    return await call_next(ex)


async def conditions(ex: Exchange, call_next: Handler) -> web.StreamResponse:
    """The route's access conditions: clearance, source network, hours (403 otherwise)."""
    assert ex.route is not None and ex.principal is not None
    rules = ex.route.rules
    reason = None
    if rules.min_level is not None and ex.principal.level < rules.min_level:
        reason, detail = "insufficient_clearance", "Your clearance does not allow this route."
    elif rules.networks is not None and not allowed(ex.client_ip, rules.networks):
        reason, detail = "network_not_allowed", "This route is not available from your network."
    elif rules.hours is not None and not rules.hours.contains(datetime.now(UTC)):
        reason, detail = "outside_allowed_hours", "This route is not available at this time."
    if reason is not None:
        ex.deny("deny_policy", reason)
        return problem(403, ex.request_id, detail)
    return await call_next(ex)
