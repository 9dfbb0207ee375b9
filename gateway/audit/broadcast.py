"""In-process fan-out of audit records to live subscribers (the admin SSE stream).

Rules:

- :meth:`AuditBroadcaster.publish` is synchronous and never blocks: each
  subscriber has a bounded queue; a subscriber that cannot keep up loses
  records (counted on the subscription, reported to the client) rather than
  slowing the request path. With no subscribers, publishing is one length check.
- Filters are exact matches on ``subject``, ``route`` and ``decision`` (any of
  the given values); a record is encoded once per publish, and only when some
  subscriber wants it.
- The number of subscribers is capped: the stream is an operator tool, not an
  API, and each one costs memory.
- Records are the audit records of :mod:`gateway.audit.record` and carry no
  field values; the stream is still sensitive (subjects, customer ids) and is
  served only behind the admin token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import Any, Final

import orjson

FILTER_KEYS: Final = ("subject", "route", "decision")


class TooManySubscribers(Exception):
    """The subscriber cap is reached."""


class Subscription:
    """One live subscriber: ``await get()`` yields encoded records (``None`` on close)."""

    def __init__(self, filters: Mapping[str, Collection[str]], queue_size: int) -> None:
        self.filters = {k: frozenset(v) for k, v in filters.items() if v}
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(queue_size)
        self.dropped = 0
        self.closed = False

    def wants(self, record: Mapping[str, Any]) -> bool:
        return all(record.get(k) in allowed for k, allowed in self.filters.items())

    def offer(self, line: bytes | None) -> None:
        try:
            self.queue.put_nowait(line)
        except asyncio.QueueFull:
            if line is None:
                # Closing must get through: make room by dropping the oldest record.
                self.queue.get_nowait()
                self.dropped += 1
                self.queue.put_nowait(None)
            else:
                self.dropped += 1

    async def get(self) -> bytes | None:
        """The next encoded record; ``None`` when the broadcaster closed."""
        if self.closed:
            return None
        line = await self.queue.get()
        if line is None:
            self.closed = True
        return line

    def take_dropped(self) -> int:
        n, self.dropped = self.dropped, 0
        return n


class AuditBroadcaster:
    def __init__(self, *, queue_size: int = 1000, max_subscribers: int = 32) -> None:
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._subs: list[Subscription] = []
        self._closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def subscribe(self, filters: Mapping[str, Collection[str]] | None = None) -> Subscription:
        unknown = set(filters or {}) - set(FILTER_KEYS)
        if unknown:
            raise ValueError(f"unknown filter {sorted(unknown)[0]!r}")
        if len(self._subs) >= self.max_subscribers:
            raise TooManySubscribers
        sub = Subscription(filters or {}, self.queue_size)
        if self._closed:
            sub.offer(None)
        # Copy-on-write: publish iterates the list without a lock.
        self._subs = [*self._subs, sub]
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs = [s for s in self._subs if s is not sub]

    def publish(self, record: Mapping[str, Any]) -> None:
        """Offer ``record`` to every matching subscriber; never blocks, never raises."""
        subs = self._subs
        if not subs:
            return
        line: bytes | None = None
        for sub in subs:
            if sub.wants(record):
                if line is None:
                    try:
                        line = orjson.dumps(record)
                    except TypeError:
                        return  # not a build_record() record: a bug, but not the caller's problem
                sub.offer(line)

    def note_dropped(self, n: int) -> None:
        """``n`` records were lost upstream of this broadcaster (the stream it relays, as
        the ``workers: N`` supervisor does, fell behind): every subscriber is told."""
        if n > 0:
            for sub in self._subs:
                sub.dropped += n

    def close(self) -> None:
        """End every subscription (on shutdown); later subscribers end at once."""
        self._closed = True
        for sub in self._subs:
            sub.offer(None)
