"""The audit record: one JSON object per request (pure; no I/O).

Contract (PRODUCT.md "Audit record" and "Decisions"):

- An audit record carries **identifiers, rule names and counts — never field
  values**. Callers pass the request's metadata (subject, route, status...),
  the ids of the customer records returned, and per-rule counters; nothing in
  this module accepts a response body or a masked/unmasked value, and nothing
  here may be extended to. Query *values* never enter: only parameter names.
- Keys are always present and always in the order of :data:`KEYS`, so that
  line-oriented tools (and humans) can diff records.
- ``ts`` is RFC 3339 UTC with milliseconds (``2026-11-24T08:01:02.123Z``).
- ``path`` never carries a query string; ``query_keys`` are the decoded
  parameter names, sorted and deduplicated.
- ``decision`` is one of :data:`DECISIONS`; anything else is a programming
  error and raises ``ValueError`` (the observe stage must not invent one).
- A refused response (any decision but ``allow``) delivered no customer data:
  ``records`` is 0, ``entities`` is empty and the field counters are empty,
  whatever the caller passed — masking may have run before a quota refused the
  response, and the trail must not claim that data was revealed.
- ``entities`` is capped (default 100) so one bulk read cannot make a huge
  line; ``entities_total`` keeps the full count. Ids are strings (JSON numbers
  wider than 64 bits would not survive every consumer).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

from gateway.query import query_keys as _query_keys

DECISIONS: Final = frozenset(
    {
        "allow",
        "deny_auth",
        "deny_policy",
        "deny_route",
        "rate_limited",
        "fail_closed",
        "upstream_error",
        "unavailable",
    }
)

#: Field counters, in record order (the same names as ``gateway.rules.plan.COUNTERS``).
FIELD_COUNTERS: Final = ("masked", "dropped", "redacted", "hashed", "revealed")

#: Record keys, in order.
KEYS: Final = (
    "ts",
    "request_id",
    "subject",
    "clearance",
    "client_ip",
    "method",
    "path",
    "query_keys",
    "route",
    "policy",
    "status",
    "upstream_status",
    "decision",
    "reason",
    "duration_ms",
    "upstream_ms",
    "records",
    "entities",
    "entities_total",
    "fields",
    "quota",
    "rules_version",
)

DEFAULT_ENTITIES_CAP: Final = 100


# gmtime + strftime were most of format_ts's cost, and a busy gateway formats hundreds
# of records within the same second: the second's text is kept, with the second it
# belongs to, in one tuple that is replaced whole (a reader never pairs one second with
# another's text). The millisecond suffixes are a table.
_ts_second: tuple[int | None, str] = (None, "")
_MS_SUFFIX: Final = tuple(f".{ms:03d}Z" for ms in range(1000))


def format_ts(epoch: float) -> str:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC, milliseconds, rounded)."""
    global _ts_second
    secs, ms = divmod(round(epoch * 1000), 1000)
    cached = _ts_second
    if cached[0] != secs:
        cached = _ts_second = (secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)))
    return cached[1] + _MS_SUFFIX[ms]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# The masking plan reports each counter's rules in rule-file order; the record lists
# them sorted. Sorting per record was most of _fields' cost, so the sorted order of each
# rule sequence seen is kept. Rule names come from the loaded rules, never from a
# request, so there are a handful of sequences per policy; the bound only guards
# against a caller that passes something else.
_sorted_rules: dict[tuple[str, ...], tuple[str, ...]] = {}
_SORTED_RULES_MAX: Final = 4096


def _remember_order(names: tuple[str, ...]) -> tuple[str, ...]:
    order = tuple(sorted(names))
    if len(_sorted_rules) >= _SORTED_RULES_MAX:
        _sorted_rules.clear()
    _sorted_rules[names] = order
    return order


def _fields(counts: Mapping[str, Mapping[str, int]] | None) -> dict[str, dict[str, int]]:
    # Always all five counters, in FIELD_COUNTERS order; unknown counters are a bug upstream.
    # A literal, not a comprehension over FIELD_COUNTERS: that builds and calls a function.
    out: dict[str, dict[str, int]] = {
        "masked": {},
        "dropped": {},
        "redacted": {},
        "hashed": {},
        "revealed": {},
    }
    if not counts:
        return out
    for counter, by_rule in counts.items():
        if counter not in out:
            raise ValueError(f"unknown field counter {counter!r}")
        kept: dict[str, int] = {}
        if by_rule:
            names = tuple(by_rule)
            for rule in _sorted_rules.get(names) or _remember_order(names):
                n = by_rule[rule]
                if n:
                    kept[rule] = n if type(n) is int else int(n)
        out[counter] = kept
    return out


def _quota(quota: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if quota:
        for name, q in quota.items():
            out[name] = {
                "used": q.get("used"),
                "limit": q.get("limit"),
                "alert": bool(q.get("alert")),
            }
    return out


def build_record(
    ts: float,
    request_id: str,
    subject: str | None,
    clearance: str | None,
    client_ip: str,
    method: str,
    path: str,
    query: str,
    route: str | None,
    policy: str | None,
    status: int,
    upstream_status: int | None,
    decision: str,
    reason: str | None,
    duration_ms: float,
    upstream_ms: float | None,
    records: int = 0,
    entities: Iterable[str | int] = (),
    fields: Mapping[str, Mapping[str, int]] | None = None,
    quota: Mapping[str, Mapping[str, Any]] | None = None,
    rules_version: str | None = None,
    entities_cap: int = DEFAULT_ENTITIES_CAP,
) -> dict[str, Any]:
    """The audit record for one request, keys in :data:`KEYS` order.

    ``query`` is the raw query string (only its parameter names are kept);
    ``fields`` is ``{counter: {rule: count}}`` as the masking plan reports it;
    ``quota`` is ``{name: {"used": n, "limit": n, "alert": bool}}``.

    The parameters follow the record's keys (``query`` gives ``query_keys``,
    ``entities`` also ``entities_total``), so the request path (``gateway.trail``)
    passes them by position: binding 21 keyword arguments cost about 11k
    instructions per request, more than building the record itself. Everything
    else may name them.
    """
    if decision not in DECISIONS:
        raise ValueError(f"unknown audit decision {decision!r}")
    allowed = decision == "allow"
    cap = max(entities_cap, 0)
    if not allowed:
        shown: list[str] = []
        total = 0
    elif isinstance(entities, list | tuple):
        # The usual case (the exchange's list): only the ids the record keeps are
        # converted, not all of a bulk read's.
        shown = [str(e) for e in entities[:cap]]
        total = len(entities)
    else:
        ids = [str(e) for e in entities]
        shown = ids[:cap]
        total = len(ids)
    return {
        "ts": format_ts(ts),
        "request_id": request_id,
        "subject": subject,
        "clearance": clearance,
        "client_ip": client_ip,
        "method": method,
        "path": path.partition("?")[0],
        "query_keys": _query_keys(query),
        "route": route,
        "policy": policy,
        "status": status,
        "upstream_status": upstream_status,
        "decision": decision,
        "reason": reason,
        "duration_ms": round(duration_ms, 2),
        "upstream_ms": _ms(upstream_ms),
        "records": records if allowed else 0,
        "entities": shown,
        "entities_total": total,
        "fields": _fields(fields if allowed else None),
        "quota": _quota(quota),
        "rules_version": rules_version,
    }


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One JSON line (UTF-8, ``\\n``-terminated)."""
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
