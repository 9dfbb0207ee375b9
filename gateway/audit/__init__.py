"""The audit trail: one record per request, written off the request path.

- :mod:`gateway.audit.record` — build and encode a record (pure; ids, rule
  names and counts only — never field values);
- :mod:`gateway.audit.config` — the ``audit:`` key of ``gateway.yaml``;
- :mod:`gateway.audit.sinks` — stdout, file, redis_stream (a table);
- :mod:`gateway.audit.writer` — bounded per-sink queues, batching, retry, drops;
- :mod:`gateway.audit.broadcast` — live fan-out to the admin SSE stream.
"""

from gateway.audit.broadcast import AuditBroadcaster
from gateway.audit.config import AuditConfig
from gateway.audit.record import DECISIONS, build_record, encode_record
from gateway.audit.sinks import build_sinks
from gateway.audit.writer import AuditWriter

__all__ = [
    "DECISIONS",
    "AuditBroadcaster",
    "AuditConfig",
    "AuditWriter",
    "build_record",
    "build_sinks",
    "encode_record",
]
