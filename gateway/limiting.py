"""Quotas in the request path (看多少 — how much a caller may take).

Two points, one decision module (:mod:`gateway.quota`); quotas come from the
route's policy.

Before the upstream, the ``limit`` stage:

1. Holds, no I/O: a caller this process knows to be blocked — records usage at
   ``max_records``, or no room for one more request under ``max_requests`` —
   gets 429 (``Retry-After``, ``RateLimit``/``RateLimit-Policy``) and the
   upstream is never contacted. The process knows from the store's answers to
   its own calls and, with Redis, from blocks other processes announce
   (``gateway.quota.holds``, ``gateway.quota.redisstore``).
2. The store's pre-check, only when it is needed: a quota of the route counts
   requests (they are counted here, atomically with the check, so concurrent
   requests cannot overshoot ``max_requests``); the method is not safe
   (anything but GET, HEAD, OPTIONS, TRACE: a request that may change something
   upstream is never let through on the strength of a later check); or the
   last call to the store failed (the pre-check is then the probe, and an
   outage under ``on_failure: closed`` answers 503 before the upstream).
   Otherwise nothing is asked before the upstream.

After masking, before a byte is sent, :func:`account`: the response's records
and distinct customers are checked against every ``max_*`` and added,
atomically, or the response is refused with 429 and carries no customer data;
a refused response does not count (the caller did not receive it). Records
usage already at ``max_records`` refuses here too, so a caller whose block this
process did not know yet (reached through another host an instant ago, or
before this process started) gets 429 and no data; only the upstream was
contacted, once, and the refusal teaches the process the hold. An empty
response still makes this call when nothing was asked before the upstream: it
reports usage (audit record, RateLimit fields) and teaches any hold.

Round trips to Redis per request on a route with quotas:

- 1: a safe method and no quota counting requests (the usual case): account;
  or quotas that count requests only: pre-check;
- 2: quotas that count requests and records or customers, or an unsafe method:
  pre-check and account (the account is skipped when the response carries no
  records);
- 0: a caller held by this process (refused before the upstream).

The in-memory backend takes the same steps with no I/O, so both behave alike.

With the state backend down the route follows ``state.on_failure``: ``closed``
answers 503 with ``Retry-After``; ``open`` serves and marks the exchange (audit
and metrics say so). The first request to meet an outage may already have
contacted the upstream (a safe method; under ``closed`` its data is withheld);
the next ones are checked before the upstream until the store answers again.
Recovery needs no restart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web

from gateway.exchange import Exchange, Handler
from gateway.problem import problem
from gateway.quota import Decision, KeyParts, StateUnavailable, ratelimit_headers
from gateway.quota.engine import Bucket
from gateway.rules import Quota

log = logging.getLogger("gateway.limiting")

# How long a caller is asked to wait while the state backend is unreachable.
STATE_RETRY_AFTER = 5

# RFC 9110 §9.2.1: a request with any other method may change something upstream, so
# it is never let through on the strength of a later check.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def quotas_of(ex: Exchange) -> tuple[Quota, ...]:
    # Looked up when the route was compiled, with the rules this exchange's runtime holds.
    route = ex.route
    return () if route is None else route.rules.quotas


def _parts(ex: Exchange) -> KeyParts:
    assert ex.route is not None
    subject = ex.principal.subject if ex.principal is not None else None
    return KeyParts(subject, ex.client_ip, ex.route.name)


def _buckets(ex: Exchange, quotas: tuple[Quota, ...]) -> tuple[Bucket, ...]:
    """The caller's buckets, computed on first use and kept on the exchange: digesting
    the subject is the dearest part of keying, and a request calls the store up to
    twice (more when a streamed response is accounted part by part). The exchange
    pins its runtime, so its quotas, and these buckets, hold for the whole request."""
    buckets = ex.quota_buckets
    if buckets is None:
        buckets = ex.quota_buckets = ex.runtime.state.buckets(quotas, _parts(ex))
    return buckets


def _record(ex: Exchange, decision: Decision) -> None:
    quota: dict[str, dict[str, object]] = {}
    for name, u in decision.usage.items():
        quota[name] = {"used": dict(u.used), "limit": dict(u.limits), "alert": list(u.alert)}
        # A pre-check crosses request alerts, an account record and distinct ones: keep both.
        if u.crossed:
            ex.quota_alerts += [(name, m) for m in u.crossed]
    ex.quota = quota
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


def _must_precheck(ex: Exchange) -> bool:
    """Whether the store must be asked before the upstream (see the module docstring)."""
    assert ex.route is not None
    return (
        ex.route.rules.counts_requests
        or ex.request.method not in SAFE_METHODS
        or not ex.runtime.state.healthy
    )


async def limit(ex: Exchange, call_next: Handler) -> web.StreamResponse:
    """Before the upstream: refuse a caller known to be at a limit; ask the store when
    requests must be counted, the method is unsafe, or the store just failed."""
    quotas = quotas_of(ex)
    if not quotas:
        return await call_next(ex)
    state = ex.runtime.state
    buckets = _buckets(ex, quotas)
    held = state.held(quotas, buckets)
    if held is not None:
        _record(ex, held)
        return _blocked(ex, held)
    if not _must_precheck(ex):
        return await call_next(ex)
    try:
        decision = await state.precheck(quotas, buckets)
    except StateUnavailable:
        refusal = _unavailable(ex)
        return refusal if refusal is not None else await call_next(ex)
    _record(ex, decision)
    if not decision.allowed:
        return _blocked(ex, decision)
    return await call_next(ex)


async def account(ex: Exchange, records: int, ids: Sequence[str]) -> web.Response | None:
    """Count ``records`` (with these customer ``ids``) before they are sent; a refusal
    replaces them (None: send them). A buffered response is accounted whole; a
    streamed one part by part (:mod:`gateway.bodyfilter`).

    An empty response still makes the call when nothing was asked of the store
    before the upstream: it reports usage (audit, RateLimit headers) and teaches
    this process any hold, at the cost of the one round trip every request makes.
    """
    route = ex.route
    if route is None or not route.rules.counts_responses:
        return None  # nothing to count, and the pre-check has reported usage
    quotas = route.rules.quotas
    if records == 0 and not ids and (ex.quota or ex.state_failed):
        return None
    buckets = _buckets(ex, quotas)
    try:
        decision = await ex.runtime.state.account(quotas, buckets, records, ids)
    except StateUnavailable:
        return _unavailable(ex)
    _record(ex, decision)
    if not decision.allowed:
        return _blocked(ex, decision)
    return None
