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
    # By position, in the record's key order (see build_record): 21 keyword arguments
    # cost more to bind than the record costs to build. One argument per key.
    record = build_record(
        ex.wall_start,  # ts
        ex.request_id,  # request_id
        p.subject if p is not None else None,  # subject
        p.level_name if p is not None else None,  # clearance
        ex.client_ip,  # client_ip
        ex.request.method,  # method
        path[:MAX_LOGGED_PATH],  # path
        ex.query,  # query_keys
        route,  # route
        policy,  # policy
        status,  # status
        ex.upstream_status,  # upstream_status
        ex.decision,  # decision
        ex.reason,  # reason
        duration * 1000,  # duration_ms
        ex.upstream_ms,  # upstream_ms
        ex.records,  # records
        ex.entities,  # entities, entities_total
        ex.fields,  # fields
        ex.quota,  # quota
        ex.runtime.version,  # rules_version
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
