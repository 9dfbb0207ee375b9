"""Quota semantics: sliding-window logs, decisions and RateLimit headers (no I/O).

Rules
=====

A quota (``gateway.rules.model.Quota``) counts, per caller key and within a
sliding window of ``window`` seconds, three metrics:

``records``
    customer records returned. Each accepted response is one *event*
    ``(ts, n)``; usage at ``t`` is the sum of ``n`` over events with
    ``ts > t - window``.
``distinct``
    distinct customers returned. Each customer id has a *last-seen* time,
    refreshed by every accepted response that carries it; usage at ``t`` is the
    number of ids with ``last_seen > t - window``. Exact: sets, not sketches.
``requests``
    requests that passed the pre-check; usage counts their timestamps the same
    way.

This is a sliding-window *log*, not a fixed or approximated window: usage drops
exactly when an entry is ``window`` old, so there is no double burst at window
edges. Two moments use it:

``precheck`` (before the upstream is contacted, when the request path asks)
    Blocked when, for any quota, the next request would exceed
    ``max_requests`` (``used + 1 > max``) or records usage is already at or
    over ``max_records`` (any record would go over). ``max_distinct`` is not
    pre-checked: a caller at the limit may still re-read the customers it
    already has (a teller reopening today's customer); a response with a new
    customer is refused on account. If nothing blocks, the request is counted
    (atomically with the check) in every quota that tracks requests.
``account`` (after the masked response is ready)
    Refused when adding this response would take any quota over
    ``max_records`` (``used + n > max``) or ``max_distinct``
    (``|ids in window ∪ ids of response| > max``). A refused response changes
    nothing (it is not counted); an accepted one adds its event and refreshes
    its ids, in every quota at once.

``retry_after`` is the whole number of seconds (rounded up, at least 1) until
enough old entries leave the window for the blocked call to pass, assuming no
other activity meanwhile: one more request, one more record / customer on a
pre-check, or *this* response on account (entries the response itself would
refresh do not help; if the response alone exceeds a max it can never fit and
the answer is the window length). With several blocking metrics the largest
wait wins and names the blocking quota and metric.

``alert`` lists the metrics whose ``alert_*`` threshold is reached (usage >=
threshold) after the call; ``crossed`` those this very call took from below
to at-or-above, so a metric counts one alert event per crossing, not one per
request while the caller stays above.

Only metrics a quota declares (``alert_*`` or ``max_*``) are tracked
(``Quota.tracks``): a quota with only ``max_records`` keeps no id set.
Untracked metrics read ``None``.

Holds
=====

Every call (pre-check or account) also reports per quota ``hold_ms``: for each
metric that would block a pre-check made right after the call, the wait —
the pre-check's own computation, on the state the call left (records usage at
``max_records``; no room for one more request under ``max_requests``). Usage
leaves a window only with time, so the caller stays blocked at least that long
whatever anyone else does. ``gateway.quota.holds`` keeps these waits in the
process, and the request path refuses a held caller before the upstream
without asking the store; ``gateway.limiting`` says when the store is asked
anyway and what a request costs.

Keys
====

``per: subject`` keys on the token subject, ``subject_route`` on subject and
route name, ``client_ip`` on the client address. An anonymous caller (no
subject) on a ``subject``/``subject_route`` quota is keyed by its client
address instead of sharing one bucket with every other anonymous caller.

Subjects, addresses and customer ids are never stored in clear: they become
keyed BLAKE2b digests (``id_key``: the deployment's hash key, so a stored
digest of a low-entropy ID-card number cannot be brute-forced from the state
store alone). Quota and route names come from the rules and are percent-escaped
so they cannot break the key layout.

Every bucket has a *tag*: ``s:<digest of subject>`` or ``i:<digest of
address>``. All quotas of one call with the same tag are decided atomically in
one step (the Redis backend puts the tag in a ``{...}`` hash tag, so one script
covers them on one Cluster slot). ``subject`` and ``subject_route`` quotas share
the subject's tag; ``client_ip`` quotas (and anonymous callers) use the
address's tag.

A usage whose bucket is shared with other callers (``client_ip``, or anonymous)
is marked ``shared`` and never exposed in RateLimit headers: those numbers
describe other people's traffic.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from gateway.rules.model import Quota

METRICS = ("records", "distinct", "requests")

# Units for the draft's ``qu`` parameter; "requests" is the draft's default
# and is therefore left out of the header.
_UNITS = {"records": "records", "distinct": "distinct-customers"}


# The per-request value objects below (KeyParts, Bucket, QuotaUsage, Decision) are slots
# dataclasses with a plain ``__init__``, not frozen ones: a frozen dataclass assigns each
# field through ``object.__setattr__``, about five times the cost of a slot store, and a
# request builds some twenty fields. They stay immutable to their users: the fields are
# ``Final`` (mypy rejects any assignment outside ``__init__``) and nothing sets them.
# ``eq``, ``repr`` and ``unsafe_hash`` keep what the frozen dataclasses compared, printed
# and hashed.


@dataclass(slots=True, init=False, unsafe_hash=True)
class KeyParts:
    """What identifies the caller for quota keys."""

    subject: Final[str | None]
    client_ip: Final[str]
    route: Final[str]

    def __init__(self, subject: str | None, client_ip: str, route: str) -> None:
        self.subject = subject
        self.client_ip = client_ip
        self.route = route


@dataclass(slots=True, init=False, unsafe_hash=True)
class Bucket:
    """Where one quota's state lives for one caller.

    ``tag`` groups buckets decided atomically together; ``name`` is unique
    within the tag; ``shared`` means other callers count into it too.
    """

    tag: Final[str]
    name: Final[str]
    shared: Final[bool]

    def __init__(self, tag: str, name: str, shared: bool) -> None:
        self.tag = tag
        self.name = name
        self.shared = shared


def counts_requests(quotas: Sequence[Quota]) -> bool:
    """Whether any of the quotas counts requests (which must happen before the upstream)."""
    return any("requests" in q.limits or "requests" in q.alerts for q in quotas)


def counts_responses(quotas: Sequence[Quota]) -> bool:
    """Whether any of the quotas counts records or distinct customers (on account)."""
    return any(m in q.limits or m in q.alerts for q in quotas for m in ("records", "distinct"))


def fingerprint(quota: Quota) -> str:
    """What a hold depends on: the window and the maxima (``w_ms:records:distinct:requests``).

    A hold learnt under one definition never applies to another (a reload that
    raises a limit ends it), and the Redis script builds the same string. Built
    once when the quota is loaded (``Quota.fingerprint``).
    """
    return quota.fingerprint


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _escape(name: str) -> str:
    # ``:``, ``{``, ``}`` and anything non-ASCII become %XX so a name can never
    # add a key segment or a hash tag.
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), name)


# Bucket names a Keyer remembers (quota and route names: a few per rule set).
_MAX_NAMES = 4096


class Keyer:
    """The key scheme, keyed with the deployment's hash key (built once)."""

    __slots__ = ("_id", "_ip", "_names", "_sub")

    def __init__(self, id_key: bytes = b"") -> None:
        # BLAKE2b takes a key of at most 64 bytes; longer keys are hashed first.
        key = id_key if len(id_key) <= 64 else hashlib.sha256(id_key).digest()
        # Keyed states built once and copied per digest: keying costs a whole
        # compression block, which would otherwise double the cost of each digest.
        self._ip = hashlib.blake2b(digest_size=12, key=key, person=b"gw-quota-ip")
        self._sub = hashlib.blake2b(digest_size=12, key=key, person=b"gw-quota-sub")
        self._id = hashlib.blake2b(digest_size=16, key=key, person=b"gw-quota-id")
        # Bucket names by (quota, per, route): escaping is a regex pass per name, and
        # the names come from the rules and routes, so a handful serve every request.
        self._names: dict[tuple[str, str, str], str] = {}

    @staticmethod
    def _digest(base: hashlib.blake2b, text: str) -> bytes:
        h = base.copy()
        h.update(text.encode("utf-8", "surrogatepass"))
        return h.digest()

    def bucket(self, quota: Quota, parts: KeyParts) -> Bucket:
        return self.buckets((quota,), parts)[0]

    def _name(self, quota: Quota, route: str) -> str:
        """``<kind>:<quota>[:<route>]``, escaped (see the module docstring, "Keys")."""
        key = (quota.name, quota.per, route if quota.per == "subject_route" else "")
        name = self._names.get(key)
        if name is None:
            name = _escape(quota.name)
            kind = {"subject": "s", "client_ip": "i", "subject_route": "r"}[quota.per]
            if quota.per == "subject_route":
                name += ":" + _escape(route)
            if len(self._names) >= _MAX_NAMES:  # only reloads renaming things get here
                self._names.clear()
            name = self._names[key] = f"{kind}:{name}"
        return name

    def buckets(self, quotas: Sequence[Quota], parts: KeyParts) -> tuple[Bucket, ...]:
        """Each quota's bucket for the caller. Every tag is digested at most once: the
        quotas of a policy usually share the subject's."""
        ip_tag = sub_tag = ""
        out: list[Bucket] = []
        for quota in quotas:
            if parts.subject is None or quota.per == "client_ip":
                if not ip_tag:
                    ip_tag = "i:" + self._digest(self._ip, parts.client_ip).hex()
                tag = ip_tag
                shared = True
            else:
                if not sub_tag:
                    sub_tag = "s:" + self._digest(self._sub, parts.subject).hex()
                tag = sub_tag
                shared = False
            out.append(Bucket(tag, self._name(quota, parts.route), shared))
        return tuple(out)

    def ids(self, ids: Sequence[str]) -> list[bytes]:
        """Digests of customer ids, duplicates removed, order kept."""
        copy = self._id.copy
        out: dict[bytes, None] = {}
        for i in ids:
            h = copy()
            h.update(i.encode("utf-8", "surrogatepass"))
            out[h.digest()] = None
        return list(out)


@dataclass(slots=True)
class Observation:
    """What a backend saw for one quota in one call (times in milliseconds).

    ``used`` is after the call (tracked metrics only), ``added`` what the call
    itself added (nothing when blocked), ``reset_ms`` the time until the oldest
    counted entry leaves the window (metrics in use only), ``retry_ms`` the
    wait for each metric that blocks the call, ``hold_ms`` the wait for each
    metric that would block a pre-check made right after the call (see
    "Holds" in the module docstring).
    """

    used: dict[str, int] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)
    reset_ms: dict[str, int] = field(default_factory=dict)
    retry_ms: dict[str, int] = field(default_factory=dict)
    hold_ms: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True, init=False, unsafe_hash=True)
class QuotaUsage:
    """One quota's usage after a call, as reported to audit, metrics and headers.

    Immutable, like every value object here (see KeyParts); ``hold_ms`` defaults to
    a new empty dict."""

    name: Final[str]
    window: Final[int]
    limits: Final[Mapping[str, int]]
    used: Final[Mapping[str, int]]
    alert: Final[tuple[str, ...]]
    crossed: Final[tuple[str, ...]]
    reset: Final[Mapping[str, int]]
    shared: Final[bool]
    hold_ms: Final[Mapping[str, int]]

    def __init__(
        self,
        name: str,
        window: int,
        limits: Mapping[str, int],
        used: Mapping[str, int],
        alert: tuple[str, ...],
        crossed: tuple[str, ...],
        reset: Mapping[str, int],
        shared: bool,
        hold_ms: Mapping[str, int] | None = None,
    ) -> None:
        self.name = name
        self.window = window
        self.limits = limits
        self.used = used
        self.alert = alert
        self.crossed = crossed
        self.reset = reset
        self.shared = shared
        self.hold_ms = {} if hold_ms is None else hold_ms

    @property
    def used_records(self) -> int | None:
        return self.used.get("records")

    @property
    def used_distinct(self) -> int | None:
        return self.used.get("distinct")

    @property
    def used_requests(self) -> int | None:
        return self.used.get("requests")


@dataclass(slots=True, init=False, unsafe_hash=True)
class Decision:
    """The outcome of a pre-check or an account call.

    ``quota``/``metric``/``retry_after`` are set when not ``allowed``;
    ``retry_after`` is whole seconds, at least 1. Immutable (see KeyParts).
    """

    allowed: Final[bool]
    usage: Final[Mapping[str, QuotaUsage]]
    quota: Final[str | None]
    metric: Final[str | None]
    retry_after: Final[int | None]

    def __init__(
        self,
        allowed: bool,
        usage: Mapping[str, QuotaUsage],
        quota: str | None = None,
        metric: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.allowed = allowed
        self.usage = usage
        self.quota = quota
        self.metric = metric
        self.retry_after = retry_after


def to_ms(now: float) -> int:
    """Seconds to the integer milliseconds both backends keep."""
    return round(now * 1000)


def seconds(ms: int) -> int:
    """Milliseconds (a whole number) to whole seconds, rounded up, at least 1."""
    return max(1, (ms + 999) // 1000)


def decide(
    quotas: Sequence[Quota], buckets: Sequence[Bucket], obs: Sequence[Observation]
) -> Decision:
    """Fold per-quota observations into one decision (the same for every backend).

    The usage takes the observations' ``used`` and ``hold_ms`` dicts as they are, not
    copies: the observations are the call's own and are not touched after this.
    """
    # Indexed, not zip(strict=True): that parses its keyword on every call.
    if not len(quotas) == len(buckets) == len(obs):
        raise ValueError("one bucket and one observation per quota")
    usage: dict[str, QuotaUsage] = {}
    worst: tuple[int, str, str] | None = None
    for i, q in enumerate(quotas):
        o = obs[i]
        alert: tuple[str, ...] = ()
        crossed: tuple[str, ...] = ()
        if q.alert_order:
            # Walked in METRICS order, the order alerts are reported in.
            reached: list[str] = []
            new: list[str] = []
            for m, threshold in q.alert_order:
                used = o.used.get(m)
                if used is not None and used >= threshold:
                    reached.append(m)
                    if used - o.added.get(m, 0) < threshold:
                        new.append(m)
            alert, crossed = tuple(reached), tuple(new)
        # A loop, not a comprehension: that builds and calls a function object every time.
        reset: dict[str, int] = {}
        for m, left in o.reset_ms.items():
            reset[m] = seconds(left) if left > 0 else 0
        usage[q.name] = QuotaUsage(
            q.name,
            q.window,
            q.limits,
            o.used,
            alert,
            crossed,
            reset,
            buckets[i].shared,
            o.hold_ms,
        )
        if o.retry_ms:
            for m in METRICS:
                ms = o.retry_ms.get(m)
                # Strictly greater: on a tie the first quota (file order) names the block.
                if ms is not None and (worst is None or ms > worst[0]):
                    worst = (ms, q.name, m)
    if worst is None:
        return Decision(True, usage)
    return Decision(False, usage, worst[1], worst[2], seconds(worst[0]))


def _sf_string(text: str) -> str:
    # RFC 8941 sf-string: printable ASCII only, with " and \ escaped.
    clean = "".join(c if " " <= c <= "~" else "_" for c in text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=1024)
def _policy(name: str, limit: int, window: int, metric: str) -> tuple[str, str]:
    """``RateLimit-Policy`` and the head of ``RateLimit`` (up to ``r=``) for one limit.
    Cached: they depend on the rules only (a few quotas), and a header goes out with
    every response."""
    sf = _sf_string(name)
    unit = f';qu="{_UNITS[metric]}"' if metric in _UNITS else ""
    return f"{sf};q={limit};w={window}{unit}", f"{sf};r="


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers).

    One policy: the blocking quota/metric, else the caller's most constrained
    limit (smallest remaining share, then smallest remaining). ``t`` is the
    retry delay when blocked, else the seconds until the oldest counted entry
    frees a unit (0 when nothing is counted). Shared buckets (per client_ip,
    anonymous callers) are never disclosed; a block by one yields no headers
    (``Retry-After`` alone tells the caller when to come back).
    """
    pick: tuple[QuotaUsage, str, int, int] | None = None
    if not decision.allowed:
        assert decision.quota is not None and decision.metric is not None
        u = decision.usage[decision.quota]
        if u.shared:
            return {}
        pick = (u, decision.metric, 0, decision.retry_after or 1)
    else:
        # Ranked by (share, remaining) compared field by field: the same order as
        # comparing the tuples, without building one per limit of every response.
        best_share = 2.0  # above any share (remaining is at most the limit)
        best_left = 0
        for u in decision.usage.values():
            if u.shared:
                continue
            limits, used = u.limits, u.used
            for m in METRICS:
                limit = limits.get(m)
                if limit is None:
                    continue
                remaining = limit - used.get(m, 0)
                if remaining < 0:
                    remaining = 0
                share = remaining / limit
                if share < best_share or (share == best_share and remaining < best_left):
                    best_share, best_left = share, remaining
                    pick = (u, m, remaining, u.reset.get(m, 0))
    if pick is None:
        return {}
    u, m, remaining, reset = pick
    policy, head = _policy(u.name, u.limits[m], u.window, m)
    return {"RateLimit-Policy": policy, "RateLimit": f"{head}{remaining};t={reset}"}
