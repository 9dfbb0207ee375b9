"""In-process quota state: the embedded default (one process, no sharing).

Each bucket is a :class:`Window` of three logs in time order: request times, a
deque of ``(ts, n)`` events with their running total, and an insertion-ordered
dict of id digest -> last-seen (a refreshed id moves to the end, so the dict
stays ordered by last-seen). Pruning pops from the front, so a call costs
O(entries expired + ids in the response), and the retry computation, only on a
block, walks at most the entries that must expire.

Decisions never await, so each call is atomic across all its quotas on the
event loop. Each decision also reports its holds (:meth:`Window.waits` on the
state the call left, the pre-check's own test) and keeps them for ``held``, so
the request path behaves exactly as with Redis, one process's worth. Times are
integer milliseconds, like the Redis backend, and a window never goes back in
time (a clock step backwards is clamped) so its logs stay sorted.

Memory: with a ``max_*`` the log it limits holds at most ``max`` entries (a
blocked or refused call adds nothing); a metric with only ``alert_*`` holds
what the caller received within the window. A bucket untouched for its
window is empty and is dropped: buckets live in least-recently-used order and
every call drops the expired ones at the front, so at most the buckets touched
within the longest window stay in memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Sequence

from gateway.quota.engine import (
    Bucket,
    Decision,
    Keyer,
    KeyParts,
    Observation,
    decide,
    to_ms,
)
from gateway.quota.holds import Holds
from gateway.rules.model import Quota


class Window:
    """One bucket's logs. Methods take ``now`` in ms and the window length ``w``."""

    __slots__ = ("events", "ids", "last", "records", "requests")

    def __init__(self) -> None:
        self.requests: deque[int] = deque()
        self.events: deque[tuple[int, int]] = deque()
        self.records = 0
        self.ids: OrderedDict[bytes, int] = OrderedDict()
        self.last = 0

    def clock(self, now: int) -> int:
        if now > self.last:
            self.last = now
        return self.last

    def prune(self, now: int, w: int) -> None:
        cutoff = now - w  # an entry counts while ts > now - w
        while self.requests and self.requests[0] <= cutoff:
            self.requests.popleft()
        while self.events and self.events[0][0] <= cutoff:
            self.records -= self.events.popleft()[1]
        ids = self.ids
        while ids:
            oldest = next(iter(ids))
            if ids[oldest] > cutoff:
                break
            del ids[oldest]

    def empty(self) -> bool:
        return not (self.requests or self.events or self.ids)

    def records_free_at(self, need: int, w: int) -> int:
        """When ``need`` records have left the window (ms timestamp)."""
        freed = 0
        for ts, n in self.events:
            freed += n
            if freed >= need:
                return ts + w
        raise AssertionError("need exceeds usage")  # pragma: no cover - callers check

    def ids_free_at(self, k: int, w: int, skip: set[bytes] | frozenset[bytes] = frozenset()) -> int:
        """When the ``k``-th oldest id not in ``skip`` leaves the window."""
        for digest, ts in self.ids.items():
            if digest in skip:
                continue
            k -= 1
            if k == 0:
                return ts + w
        raise AssertionError("k exceeds usage")  # pragma: no cover - callers check

    def waits(self, q: Quota, now: int) -> dict[str, int]:
        """What blocks a pre-check now: metric -> ms until it would pass.

        One more request must fit ``max_requests``; records usage must be below
        ``max_records``. ``max_distinct`` is not pre-checked (see the engine's rules).
        """
        w = q.window_ms
        lim = q.limits
        out: dict[str, int] = {}
        if "requests" in lim and len(self.requests) + 1 > lim["requests"]:
            k = len(self.requests) + 1 - lim["requests"]
            out["requests"] = self.requests[k - 1] + w - now
        if "records" in lim and self.records >= lim["records"]:
            out["records"] = self.records_free_at(self.records - lim["records"] + 1, w) - now
        return out

    def observe(self, q: Quota, now: int) -> Observation:
        """Usage of the metrics ``q`` tracks, and when the oldest entry of each leaves.

        Spelt out metric by metric, in METRICS order (the order usage is reported in):
        this runs for every quota of every call.
        """
        tr, td, tq = q.tracks
        used: dict[str, int] = {}
        reset: dict[str, int] = {}
        w = q.window_ms - now
        if tr:
            used["records"] = self.records
            if self.events:
                reset["records"] = self.events[0][0] + w
        if td:
            ids = self.ids
            used["distinct"] = len(ids)
            if ids:
                reset["distinct"] = next(iter(ids.values())) + w
        if tq:
            used["requests"] = len(self.requests)
            if self.requests:
                reset["requests"] = self.requests[0] + w
        # All five given: the dataclass's default factories cost a call each.
        return Observation(used, {}, reset, {}, {})


# One quota of a call: the quota, its window, the window's time, what the call saw.
_Step = tuple[Quota, Window, int, Observation]


class MemoryBackend:
    """Quota state in this process's memory (``state:`` absent)."""

    # The store is this process: it never fails.
    healthy = True

    def __init__(self, *, id_key: bytes = b"") -> None:
        self._keyer = Keyer(id_key)
        self._windows: OrderedDict[tuple[str, str], Window] = OrderedDict()
        self._spans: dict[tuple[str, str], int] = {}
        self._holds = Holds()

    def __len__(self) -> int:
        """Buckets held (for tests and metrics)."""
        return len(self._windows)

    @staticmethod
    def _seconds(now: float | None) -> float:
        return time.monotonic() if now is None else now

    def _sweep(self, now: int) -> None:
        windows, spans = self._windows, self._spans
        while windows:
            key, win = next(iter(windows.items()))
            if win.last + spans[key] > now:
                break
            del windows[key]
            del spans[key]

    def buckets(self, quotas: Sequence[Quota], parts: KeyParts) -> tuple[Bucket, ...]:
        return self._keyer.buckets(quotas, parts)

    def _open(
        self, quotas: Sequence[Quota], buckets: Sequence[Bucket], ms: int
    ) -> tuple[list[_Step], list[Observation]]:
        """Each quota with its bucket's window (made, or moved to the recent end), pruned
        at ``ms``, the window's own time (never behind its last call) and what it holds
        (``Window.observe``); and those observations alone, for ``decide``.

        The calls walk this one list, not several zipped together: zip(strict=True)
        parses its keyword on every call, a cost paid several times a request.
        """
        if len(buckets) != len(quotas):
            raise ValueError("one bucket per quota")
        self._sweep(ms)
        windows, spans = self._windows, self._spans
        steps: list[_Step] = []
        obs: list[Observation] = []
        # One pass per quota: a call's buckets are distinct, so each window is found,
        # clocked and pruned independently of the others.
        for i, q in enumerate(quotas):
            b = buckets[i]
            key = (b.tag, b.name)
            w = q.window_ms
            win = windows.get(key)
            if win is None:
                win = windows[key] = Window()
                spans[key] = w
            else:
                windows.move_to_end(key)
                # The longest window any quota used with this bucket keeps it alive.
                if spans[key] < w:
                    spans[key] = w
            t = win.clock(ms)
            win.prune(t, w)
            o = win.observe(q, t)
            steps.append((q, win, t, o))
            obs.append(o)
        return steps, obs

    async def precheck(
        self, quotas: Sequence[Quota], buckets: Sequence[Bucket], now: float | None = None
    ) -> Decision:
        sec = self._seconds(now)
        steps, obs = self._open(quotas, buckets, to_ms(sec))
        blocked = False
        for q, win, t, o in steps:
            o.retry_ms = win.waits(q, t)
            blocked = blocked or bool(o.retry_ms)
        if not blocked:
            for q, win, t, o in steps:
                if q.tracks[2]:
                    win.requests.append(t)
                    o.added["requests"] = 1
                    o.used["requests"] += 1
                    o.reset_ms.setdefault("requests", q.window_ms)
        return self._learn(quotas, buckets, steps, obs, sec)

    def _learn(
        self,
        quotas: Sequence[Quota],
        buckets: Sequence[Bucket],
        steps: list[_Step],
        obs: list[Observation],
        sec: float,
    ) -> Decision:
        """Holds and decision of a call made at ``sec`` (the clock read its windows were
        opened at, so a hold counts from the same instant as the wait it carries)."""
        for q, win, t, o in steps:
            o.hold_ms = win.waits(q, t)
        decision = decide(quotas, buckets, obs)
        self._holds.learn(quotas, buckets, decision, sec)
        return decision

    def held(
        self, quotas: Sequence[Quota], buckets: Sequence[Bucket], now: float | None = None
    ) -> Decision | None:
        if not quotas or not self._holds:
            return None
        return self._holds.check(quotas, buckets, self._seconds(now))

    async def account(
        self,
        quotas: Sequence[Quota],
        buckets: Sequence[Bucket],
        records: int,
        ids: Sequence[str],
        now: float | None = None,
    ) -> Decision:
        digests = self._keyer.ids(ids)
        n_ids = len(digests)
        sec = self._seconds(now)
        steps, obs = self._open(quotas, buckets, to_ms(sec))
        blocked = False
        for q, win, t, o in steps:
            w = q.window_ms
            lim = q.limits
            if "records" in lim and win.records + records > lim["records"]:
                if records > lim["records"]:
                    o.retry_ms["records"] = w
                else:
                    need = win.records + records - lim["records"]
                    o.retry_ms["records"] = win.records_free_at(need, w) - t
            # Only if every id of the response were new could it go over: which ones
            # are new is looked up then, and only then (far from the limit it is the
            # count the insertion below gives).
            if "distinct" in lim and len(win.ids) + n_ids > lim["distinct"]:
                new = sum(1 for d in digests if d not in win.ids)
                if len(win.ids) + new > lim["distinct"]:
                    if n_ids > lim["distinct"]:
                        o.retry_ms["distinct"] = w
                    else:
                        # Ids of this response already in the window do not make
                        # room by leaving: it would bring them right back.
                        present = n_ids - new
                        k = (len(win.ids) - present) - (lim["distinct"] - n_ids)
                        o.retry_ms["distinct"] = win.ids_free_at(k, w, set(digests)) - t
            blocked = blocked or bool(o.retry_ms)
        if not blocked:
            for q, win, t, o in steps:
                tr, td, _ = q.tracks
                w = q.window_ms
                if tr and records > 0:
                    win.events.append((t, records))
                    win.records += records
                    o.added["records"] = records
                    o.used["records"] += records
                    o.reset_ms.setdefault("records", w)
                if td and digests:
                    known = win.ids
                    before = len(known)
                    to_end = known.move_to_end
                    for d in digests:
                        known[d] = t
                        to_end(d)
                    new = len(known) - before
                    o.added["distinct"] = new
                    o.used["distinct"] += new
                    o.reset_ms["distinct"] = next(iter(known.values())) + w - t
        return self._learn(quotas, buckets, steps, obs, sec)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._windows.clear()
        self._spans.clear()
        self._holds.clear()
