"""The per-request context that flows through the stages, and the stage types.

A request passes named stages in one visible list (see :mod:`gateway.server`);
each stage is ``async def stage(ex, call_next) -> StreamResponse``. The chain
is folded once at start-up, from the last stage backwards, so the per-request
cost is one call per stage.

An :class:`Exchange` pins the :class:`~gateway.runtime.Runtime` it started
with: a reload swaps the server's runtime, and requests in flight finish on the
rules and routes they began with.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from gateway.types import Principal

if TYPE_CHECKING:
    from gateway.quota.engine import Bucket
    from gateway.runtime import RouteRuntime, Runtime


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")


@dataclass(slots=True, eq=False)
class Exchange:
    request: web.BaseRequest
    runtime: Runtime
    request_id: str
    started: float  # perf_counter, for durations
    client_ip: str
    wall_start: float = 0.0  # epoch seconds, for the audit timestamp
    # Filled by the stages as they learn more; read by audit and metrics.
    path: str | None = None  # normalised, without query
    query: str = ""
    route: RouteRuntime | None = None
    principal: Principal | None = None
    decision: str = "allow"
    reason: str | None = None
    upstream_status: int | None = None
    upstream_ms: float | None = None
    peer: str = ""  # the socket peer (a trusted proxy, or the client itself)
    forwarded_for: str | None = None  # inbound X-Forwarded-For chain, when a trusted proxy sent it
    records: int = 0
    entities: list[str] = field(default_factory=list)
    fields: dict[str, dict[str, int]] = field(default_factory=dict)
    # Quotas: usage for the audit record, alerts crossed by this request, the quota that
    # blocked it, and headers every response carries (RateLimit fields).
    quota: dict[str, dict[str, object]] = field(default_factory=dict)
    quota_alerts: list[tuple[str, str]] = field(default_factory=list)
    blocked_quota: str | None = None
    state_failed: bool = False
    response_headers: dict[str, str] = field(default_factory=dict)
    # The caller's quota buckets (keyed digests of the subject or address), computed
    # once by the limit stage for every call this request makes to the state store.
    quota_buckets: tuple[Bucket, ...] | None = None

    def gateway_origin(self) -> str:
        """The gateway's origin as the caller addressed it ("" when Host is unusable)."""
        host = self.request.headers.get("Host", "")
        if not host or not set(host) <= _HOST_CHARS:
            return ""
        return f"{self.request.scheme}://{host}"

    def deny(self, decision: str, reason: str) -> None:
        self.decision = decision
        self.reason = reason


Handler = Callable[[Exchange], Awaitable[web.StreamResponse]]


class Stage(Protocol):
    """``async def stage(ex, call_next)``: the parameter is named (links bind it by name)."""

    def __call__(self, ex: Exchange, call_next: Handler) -> Awaitable[web.StreamResponse]: ...


def fold(stages: Sequence[Stage], endpoint: Handler) -> Handler:
    """Compose ``stages`` around ``endpoint``: the first stage runs first.

    Each link is a ``functools.partial`` (C), not a wrapping coroutine: a request
    pays one coroutine per stage, not two.
    """
    handler = endpoint
    for stage in reversed(stages):
        handler = partial(stage, call_next=handler)
    return handler
