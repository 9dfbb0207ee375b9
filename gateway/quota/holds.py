"""Holds: the callers this process already knows are blocked (a pre-check without I/O).

Every decision a backend returns says, per quota, how long a pre-check made
right after it would be refused (``QuotaUsage.hold_ms``: ``max_records``
already reached, or no room for one more request under ``max_requests``).
:class:`Holds` keeps those waits per bucket, in this process's clock, so the
``limit`` stage can refuse such a caller before the upstream is contacted
without asking the state store (no Redis round trip).

A hold is a lower bound, never a guess: usage only leaves a window by time, so
a caller blocked until ``t`` stays blocked until ``t`` whatever else happens
(other hosts can only add usage and make the block longer). A hold therefore
never refuses a request the store would accept, with two documented edges:

- a hold announced by another process (``put(..., extend=True)``, see
  ``redisstore``) is entered a margin earlier than announced, so transit and
  event-loop delays cannot make it outlive the block;
- a reload that changes a quota's window or maxima makes its holds void
  (they are keyed by :func:`gateway.quota.engine.fingerprint`).

A hold that ends early only means the request goes on to the store and the
upstream, and the account step decides: nothing over a limit is ever delivered.
Memory is bounded: only blocked buckets are kept, expired ones are dropped when
met, and past ``max_entries`` the least recently learnt go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.quota.engine import (
    METRICS,
    Bucket,
    Decision,
    QuotaUsage,
    seconds,
    to_ms,
)
from gateway.rules.model import Quota


@dataclass(frozen=True, slots=True)
class _Hold:
    fingerprint: str
    until_ms: int
    metric: str
    used: Mapping[str, int]


class Holds:
    """Known blocks per bucket, ``(tag, name) -> until``; times in seconds, this process's clock."""

    __slots__ = ("_entries", "_max")

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[tuple[str, str], _Hold] = OrderedDict()
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def put(
        self,
        tag: str,
        name: str,
        fp: str,
        hold_ms: Mapping[str, int],
        used: Mapping[str, int],
        now: float,
        *,
        extend: bool = False,
    ) -> None:
        """Record what the store said about one bucket at ``now``: blocked for
        ``hold_ms`` (per metric), or not blocked at all (empty: forget it).

        ``extend`` (announcements from other processes) only ever lengthens a
        known hold: both are lower bounds, so the later end is still one.
        """
        key = (tag, name)
        waits = [(ms, m) for m, ms in hold_ms.items() if ms > 0]
        if not waits:
            if not extend:
                self._entries.pop(key, None)
            return
        # The longest wait; on a tie the first metric in METRICS order.
        ms, metric = max(waits, key=lambda w: (w[0], -METRICS.index(w[1])))
        until = to_ms(now) + ms
        if extend:
            known = self._entries.get(key)
            if known is not None and known.fingerprint == fp and known.until_ms >= until:
                return
        self._entries[key] = _Hold(fp, until, metric, dict(used))
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def learn(
        self, quotas: Sequence[Quota], buckets: Sequence[Bucket], decision: Decision, now: float
    ) -> None:
        """Take the holds of a decision the store returned for a call made at ``now``."""
        # Indexed, not zip(strict=True): that parses its keyword on every call.
        if len(buckets) != len(quotas):
            raise ValueError("one bucket per quota")
        entries, usage = self._entries, decision.usage
        for i, q in enumerate(quotas):
            u = usage.get(q.name)
            # No hold to take and none known to forget: the usual answer, nothing to do.
            if u is not None and (u.hold_ms or entries):
                b = buckets[i]
                self.put(b.tag, b.name, q.fingerprint, u.hold_ms, u.used, now)

    def check(
        self, quotas: Sequence[Quota], buckets: Sequence[Bucket], now: float
    ) -> Decision | None:
        """A refusal when some quota's bucket is known blocked at ``now``, else None.

        The refusal names the longest wait (ties: the first quota, as
        ``engine.decide`` does) and carries the usage last reported for the
        blocked quotas only (others are not known without asking the store).
        """
        if not self._entries:
            return None
        now_ms = to_ms(now)
        usage: dict[str, QuotaUsage] = {}
        worst: tuple[int, str, str] | None = None
        for q, b in zip(quotas, buckets, strict=True):
            key = (b.tag, b.name)
            h = self._entries.get(key)
            if h is None or h.fingerprint != q.fingerprint:
                continue
            wait = h.until_ms - now_ms
            if wait <= 0:
                del self._entries[key]
                continue
            alert = tuple(m for m in METRICS if m in q.alerts and h.used.get(m, -1) >= q.alerts[m])
            usage[q.name] = QuotaUsage(
                q.name, q.window, q.limits, dict(h.used), alert, (), {}, b.shared, {h.metric: wait}
            )
            if worst is None or wait > worst[0]:
                worst = (wait, q.name, h.metric)
        if worst is None:
            return None
        return Decision(False, usage, worst[1], worst[2], seconds(worst[0]))
