"""The trace every request leaves (查询痕迹保留): one audit record and its metrics.

Called once per request from the ``observe`` stage's ``finally`` (and for
requests the HTTP parser rejects before any stage runs). The audit record
carries names, ids and counts from the exchange, never a field value or a
query-string value (see :mod:`gateway.audit.record`); metric labels are config
names and fixed reason strings only.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway import metrics
from gateway.audit.record import build_record

if TYPE_CHECKING:
    from gateway.audit.writer import AuditWriter
    from gateway.exchange import Exchange

# A path that failed normalisation is logged raw, but bounded.
MAX_LOGGED_PATH = 512


def leave_trace(ex: Exchange, status: int, writer: AuditWriter | None) -> None:
    duration = time.perf_counter() - ex.started
    route = ex.route.name if ex.route is not None else None
    policy = ex.route.policy if ex.route is not None else None
    p = ex.principal
    path = ex.path if ex.path is not None else ex.request.raw_path.partition("?")[0]
    record = build_record(
        ts=ex.wall_start,
        request_id=ex.request_id,
        subject=p.subject if p is not None else None,
        clearance=p.level_name if p is not None else None,
        client_ip=ex.client_ip,
        method=ex.request.method,
        path=path[:MAX_LOGGED_PATH],
        query=ex.query,
        route=route,
        policy=policy,
        status=status,
        upstream_status=ex.upstream_status,
        decision=ex.decision,
        reason=ex.reason,
        duration_ms=duration * 1000,
        upstream_ms=ex.upstream_ms,
        records=ex.records,
        entities=ex.entities,
        fields=ex.fields,
        quota=ex.quota,
        rules_version=ex.runtime.version,
    )
    if writer is not None:
        writer.submit(record)
    metrics.observe_request(
        route,
        status,
        ex.decision,
        duration,
        ex.upstream_ms / 1000 if ex.upstream_ms is not None else None,
        policy,
        ex.fields if ex.decision == "allow" else None,
        ex.records if ex.decision == "allow" else 0,
        ex.reason,
    )
    for name, _metric in ex.quota_alerts:
        metrics.quota_event(name, "alert")
    if ex.blocked_quota is not None:
        metrics.quota_event(ex.blocked_quota, "block")
