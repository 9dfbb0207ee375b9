"""Prometheus metrics (names fixed by PRODUCT.md; the dashboard and alerts rely on them).

Rules:

- Every metric lives in :data:`REGISTRY` and is named in :data:`NAMES`;
  ``tests/test_metrics.py`` and ``tests/test_alert_rules.py`` check that the
  shipped dashboard and alert rules use only these names.
- Label values come from configuration and code, never from requests: route,
  policy, rule and quota names, fixed reason strings, decisions, status codes.
  A request that matched no route is ``route="none"``. This bounds cardinality
  and keeps caller input out of the SOC's tooling.
- The per-request functions are cheap: labelled children are cached in dicts
  keyed by the label tuple, so a hot request does dict lookups and ``inc``.
- ``gateway_fields_total`` moves by one series per rule and action a masked
  response touched (15-20 of them), so its counts are summed in plain
  per-series cells on the request path and added to the prometheus children
  later. In single-process mode that is whenever :data:`REGISTRY` is collected
  (every ``/metrics``): every exposition shows exactly what incrementing each
  child per request would have. In multiprocess mode (``workers: N``) each
  count written to the worker's file at once cost about a microsecond (a lock
  and an mmap write), some 15 us a masked request; there the gateway folds
  the cells into the file every :data:`FIELDS_FLUSH_SECONDS`
  (:func:`fold_fields_every`) and when it stops, so the supervisor, which reads
  the files without asking the workers, sees counts at most that old, and a
  worker killed outright loses at most that much of them (a single process
  killed outright loses everything since its last scrape). A series' child is
  still created the first time it is counted (its ``_created`` time is
  unchanged).
- ``gateway_rules_info{version}`` is 1 for the loaded version only (the old
  version's series is removed on reload). ``gateway_state_up`` is 1 while the
  state backend answers (always 1 with in-process memory).

Multi-worker (``workers: N``, :mod:`gateway.workers`): prometheus-client's
multiprocess mode. The supervisor creates a fresh directory per run and starts
each worker with ``PROMETHEUS_MULTIPROC_DIR`` pointing at it (it must be set
**before the first import of prometheus_client**: the value class is chosen at
import), calls :func:`worker_exited` when a worker dies, serves
:func:`merged_body` on the admin listener (a ``MultiProcessCollector`` per
scrape) and removes the directory on exit. In that mode gauges aggregate across
live workers: ``gateway_state_up`` is the minimum (one worker cut off from
Redis shows 0) and ``gateway_rules_info`` the maximum; a replaced rules
version reads 0 instead of disappearing.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp
from prometheus_client.metrics_core import Metric

MULTIPROC: Final = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
# Multiprocess mode: how often a worker folds its held-back field counts into its file.
FIELDS_FLUSH_SECONDS: Final = 1.0
# The 0.0.4 text format: what Prometheus 2.x (e.g. Debian 12's) negotiates without warnings.
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
NO_ROUTE: Final = "none"

REGISTRY: Final = CollectorRegistry(auto_describe=True)

# Latency buckets: masking adds milliseconds; legacy upstreams take up to the 30 s timeout.
_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS: Final = Counter(
    "gateway_requests_total",
    "Requests by route, status and decision.",
    ("route", "status", "decision"),
    registry=REGISTRY,
)
REQUEST_DURATION: Final = Histogram(
    "gateway_request_duration_seconds",
    "Time from request received to response sent, by route.",
    ("route",),
    buckets=_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_DURATION: Final = Histogram(
    "gateway_upstream_duration_seconds",
    "Time spent waiting for the upstream, by route.",
    ("route",),
    buckets=_BUCKETS,
    registry=REGISTRY,
)


class _FieldCell:
    """One ``gateway_fields_total`` series: its child and the count not yet added to it."""

    __slots__ = ("child", "pending")

    def __init__(self, child: Counter) -> None:
        self.child = child
        self.pending = 0


# policy -> action -> rule -> cell: nested, so the request path builds no label tuple.
_field_cells: dict[str, dict[str, dict[str, _FieldCell]]] = {}
# Held by the request path while it adds to cells and by the fold while it empties them:
# a scrape from another thread can neither lose nor double a count.
_fields_lock: Final = threading.Lock()


def fold_fields() -> None:
    """Add the held-back ``gateway_fields_total`` counts to their children: on collect,
    and in multiprocess mode on a timer and on stop (the worker's file)."""
    with _fields_lock:
        for by_action in _field_cells.values():
            for cells in by_action.values():
                for cell in cells.values():
                    if cell.pending:
                        cell.child.inc(cell.pending)
                        cell.pending = 0


async def fold_fields_every(interval: float = FIELDS_FLUSH_SECONDS) -> None:
    """Fold the held-back field counts every ``interval`` seconds, and once more when
    cancelled (the gateway runs this in multiprocess mode and cancels it on stop)."""
    try:
        while True:
            await asyncio.sleep(interval)
            fold_fields()
    finally:
        fold_fields()


class _FoldFirst:
    """Collects ``metric`` after ``fold`` has added the counts held back for it."""

    def __init__(self, metric: Counter, fold: Callable[[], None]) -> None:
        self._metric = metric
        self._fold = fold

    def describe(self) -> Iterable[Metric]:
        return self._metric.describe()

    def collect(self) -> Iterable[Metric]:
        self._fold()
        return self._metric.collect()


FIELDS: Final = Counter(
    "gateway_fields_total",
    "Field values touched, by policy, rule and action (masked|dropped|redacted|hashed|revealed).",
    ("policy", "rule", "action"),
    registry=None,  # registered here (its place in the exposition) behind its fold
)
REGISTRY.register(_FoldFirst(FIELDS, fold_fields))
RECORDS: Final = Counter(
    "gateway_records_total",
    "Customer records returned to callers, by route.",
    ("route",),
    registry=REGISTRY,
)
QUOTA_EVENTS: Final = Counter(
    "gateway_quota_events_total",
    "Quota alerts (threshold reached) and blocks (response refused), by quota.",
    ("quota", "kind"),
    registry=REGISTRY,
)
AUTH_FAILURES: Final = Counter(
    "gateway_auth_failures_total",
    "Failed authentications, by reason.",
    ("reason",),
    registry=REGISTRY,
)
FAIL_CLOSED: Final = Counter(
    "gateway_fail_closed_total",
    "Responses refused to stay safe (bad upstream body, state down, internal error), by reason.",
    ("reason",),
    registry=REGISTRY,
)
AUDIT_DROPPED: Final = Counter(
    "gateway_audit_dropped_total",
    "Audit records not written, by sink.",
    ("sink",),
    registry=REGISTRY,
)
RULES_RELOADS: Final = Counter(
    "gateway_rules_reloads_total",
    "Rule reloads, by result (ok|error).",
    ("result",),
    registry=REGISTRY,
)
RULES_INFO: Final = Gauge(
    "gateway_rules_info",
    "1 for the rules version being served.",
    ("version",),
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
STATE_UP: Final = Gauge(
    "gateway_state_up",
    "1 while the state backend (quotas) answers, else 0.",
    registry=REGISTRY,
    multiprocess_mode="livemin",
)

#: Every metric name this module exposes (histograms add _bucket/_sum/_count, counters _total).
NAMES: Final = frozenset(
    {
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_upstream_duration_seconds",
        "gateway_fields_total",
        "gateway_records_total",
        "gateway_quota_events_total",
        "gateway_auth_failures_total",
        "gateway_fail_closed_total",
        "gateway_audit_dropped_total",
        "gateway_rules_reloads_total",
        "gateway_rules_info",
        "gateway_state_up",
    }
)

QUOTA_KINDS: Final = frozenset({"alert", "block"})
RELOAD_RESULTS: Final = frozenset({"ok", "error"})

# Label tuple -> child. prometheus-client's .labels() does validation and a locked
# dict lookup on every call; these plain dicts make the hot path one lookup.
_requests: dict[tuple[str, str, str], Counter] = {}
_durations: dict[str, tuple[Histogram, Histogram, Counter]] = {}
_quota: dict[tuple[str, str], Counter] = {}
_auth: dict[str, Counter] = {}
_fail_closed: dict[str, Counter] = {}
_dropped: dict[str, Counter] = {}
_rules_version: list[str] = []


def _route_children(route: str) -> tuple[Histogram, Histogram, Counter]:
    children = _durations.get(route)
    if children is None:
        children = (
            REQUEST_DURATION.labels(route),
            UPSTREAM_DURATION.labels(route),
            RECORDS.labels(route),
        )
        _durations[route] = children
    return children


def observe_request(
    route: str | None,
    status: int,
    decision: str,
    duration_s: float,
    upstream_s: float | None = None,
    policy: str | None = None,
    fields: Mapping[str, Mapping[str, int]] | None = None,
    records: int = 0,
    reason: str | None = None,
) -> None:
    """Account one finished request (call once, from the observe stage's ``finally``).

    ``fields`` is the masking plan's ``{action: {rule: count}}``. With ``reason``
    given, a ``deny_auth`` decision also counts ``gateway_auth_failures_total``
    and a ``fail_closed`` one ``gateway_fail_closed_total`` — so do not call
    :func:`auth_failure` / :func:`fail_closed` for the same request.
    """
    r = route or NO_ROUTE
    key = (r, str(status), decision)
    child = _requests.get(key)
    if child is None:
        child = _requests[key] = REQUESTS.labels(*key)
    child.inc()
    req_h, up_h, rec_c = _route_children(r)
    req_h.observe(duration_s)
    if upstream_s is not None:
        up_h.observe(upstream_s)
    if records:
        rec_c.inc(records)
    if fields and policy is not None:
        _count_fields(policy, fields)
    if reason is not None:
        if decision == "deny_auth":
            auth_failure(reason)
        elif decision == "fail_closed":
            fail_closed(reason)


def _count_fields(policy: str, fields: Mapping[str, Mapping[str, int]]) -> None:
    with _fields_lock:
        by_action = _field_cells.get(policy)
        if by_action is None:
            by_action = _field_cells[policy] = {}
        for action, by_rule in fields.items():
            if not by_rule:
                continue
            cells = by_action.get(action)
            if cells is None:
                cells = by_action[action] = {}
            for rule, n in by_rule.items():
                if n:
                    cell = cells.get(rule)
                    if cell is None:
                        # The series starts now, as it did when every count was an inc().
                        cell = cells[rule] = _FieldCell(FIELDS.labels(policy, rule, action))
                    if n < 0:  # inc() refused this at once; the fold would refuse it late
                        raise ValueError("field counts cannot be negative")
                    else:
                        cell.pending += n


def quota_event(quota: str, kind: str) -> None:
    """``kind``: ``alert`` (usage reached ``alert_*``) or ``block`` (response refused)."""
    if kind not in QUOTA_KINDS:
        raise ValueError(f"unknown quota event kind {kind!r}")
    key = (quota, kind)
    c = _quota.get(key)
    if c is None:
        c = _quota[key] = QUOTA_EVENTS.labels(*key)
    c.inc()


def auth_failure(reason: str) -> None:
    c = _auth.get(reason)
    if c is None:
        c = _auth[reason] = AUTH_FAILURES.labels(reason)
    c.inc()


def fail_closed(reason: str) -> None:
    c = _fail_closed.get(reason)
    if c is None:
        c = _fail_closed[reason] = FAIL_CLOSED.labels(reason)
    c.inc()


def audit_dropped(sink: str, n: int = 1) -> None:
    c = _dropped.get(sink)
    if c is None:
        c = _dropped[sink] = AUDIT_DROPPED.labels(sink)
    c.inc(n)


def rules_reloaded(ok: bool, version: str | None = None) -> None:
    """Count a reload; on success also switch ``gateway_rules_info`` to ``version``."""
    RULES_RELOADS.labels("ok" if ok else "error").inc()
    if ok and version is not None:
        set_rules_version(version)


def set_rules_version(version: str | None) -> None:
    """Mark ``version`` as the one served (None: no rules loaded, no series)."""
    for old in _rules_version:
        if old != version:
            if MULTIPROC:
                RULES_INFO.labels(old).set(0)  # a dead series cannot be removed from mmap files
            else:
                RULES_INFO.remove(old)
    _rules_version.clear()
    if version is not None:
        RULES_INFO.labels(version).set(1)
        _rules_version.append(version)


def set_state_up(up: bool) -> None:
    STATE_UP.set(1 if up else 0)


def metrics_body() -> bytes:
    """The exposition text for ``/metrics`` (every worker's, in multiprocess mode)."""
    if MULTIPROC:
        fold_fields()  # this process's own counts, up to now
        return merged_body(None)
    return generate_latest(REGISTRY)


def merged_body(directory: str | None) -> bytes:
    """Every process's metrics in a multiprocess ``directory`` (None: the environment's).

    The supervisor of ``workers: N`` serves this without being in multiprocess
    mode itself: it records nothing, it only reads what its workers wrote.
    """
    registry = CollectorRegistry()
    _mp.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def worker_exited(pid: int, directory: str | None = None) -> None:
    """Supervisor: forget a dead worker's live gauges (its counters keep counting in the
    totals, so they never go backwards). ``directory``: the workers' multiprocess dir."""
    if directory is not None or MULTIPROC:
        _mp.mark_process_dead(pid, path=directory)  # type: ignore[no-untyped-call]
