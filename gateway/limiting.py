"""Quotas in the request path (看多少 — how much a caller may take).

Two points, one decision module (:mod:`gateway.quota`):

- the ``limit`` stage, before the upstream: a caller already at a ``max_*``
  gets 429 and the upstream is never contacted (this is also where requests
  are counted);
- :func:`account`, after the response is masked and before a byte is sent:
  the response's records and distinct customers are added atomically, or the
  response is refused with 429 and carries no customer data. A refused
  response does not count (the caller did not receive it).

Quotas come from the route's policy. With the state backend down the route
follows ``state.on_failure``: ``closed`` answers 503 with ``Retry-After``;
``open`` serves and marks the exchange (audit and metrics say so).
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.exchange import Exchange, Handler
from gateway.problem import problem
from gateway.quota import Decision, KeyParts, StateUnavailable, ratelimit_headers
from gateway.rules import Quota

log = logging.getLogger("gateway.limiting")

# How long a caller is asked to wait while the state backend is unreachable.
STATE_RETRY_AFTER = 5


def quotas_of(ex: Exchange) -> tuple[Quota, ...]:
    route, rules = ex.route, ex.runtime.rules
    if route is None or route.policy is None or rules is None:
        return ()
    return rules.policies[route.policy].quotas


def _parts(ex: Exchange) -> KeyParts:
    assert ex.route is not None
    subject = ex.principal.subject if ex.principal is not None else None
    return KeyParts(subject, ex.client_ip, ex.route.name)


def _record(ex: Exchange, decision: Decision) -> None:
    ex.quota = {
        name: {"used": dict(u.used), "limit": dict(u.limits), "alert": list(u.alert)}
        for name, u in decision.usage.items()
    }
    ex.quota_alerts = [(name, m) for name, u in decision.usage.items() for m in u.crossed]
    ex.response_headers.update(ratelimit_headers(decision))


def _unavailable(ex: Exchange) -> web.Response | None:
    """The state backend failed: 503 (on_failure closed) or None to serve anyway (open)."""
    log.warning("state backend unavailable (on_failure=%s)", ex.runtime.config.state.on_failure)
    ex.state_failed = True
    if ex.runtime.config.state.on_failure == "open":
        return None
    ex.deny("unavailable", "state_unavailable")
    return problem(
        503,
        ex.request_id,
        "Usage limits cannot be checked right now.",
        headers={"Retry-After": str(STATE_RETRY_AFTER)},
    )


def _blocked(ex: Exchange, decision: Decision) -> web.Response:
    ex.deny("rate_limited", "quota_exceeded")
    ex.blocked_quota = decision.quota
    headers = {"Retry-After": str(decision.retry_after or 1), **ex.response_headers}
    # Names the quota and when to come back; never anyone's usage but the caller's own.
    return problem(
        429,
        ex.request_id,
        "The usage limit for this kind of request is reached.",
        headers=headers,
        quota=decision.quota,
    )


async def limit(ex: Exchange, call_next: Handler) -> web.StreamResponse:
    """Pre-check: a caller already at a limit never reaches the upstream."""
    quotas = quotas_of(ex)
    if not quotas:
        return await call_next(ex)
    try:
        decision = await ex.runtime.state.precheck(quotas, _parts(ex))
    except StateUnavailable:
        refusal = _unavailable(ex)
        return refusal if refusal is not None else await call_next(ex)
    _record(ex, decision)
    if not decision.allowed:
        return _blocked(ex, decision)
    return await call_next(ex)


async def account(ex: Exchange) -> web.Response | None:
    """Count a masked response before it is sent; a refusal replaces it (None: send it)."""
    quotas = quotas_of(ex)
    if not quotas or (ex.records == 0 and not ex.entities):
        return None
    try:
        decision = await ex.runtime.state.account(quotas, _parts(ex), ex.records, ex.entities)
    except StateUnavailable:
        return _unavailable(ex)
    _record(ex, decision)
    if not decision.allowed:
        ex.records, ex.entities = 0, []
        return _blocked(ex, decision)
    return None
