"""The audit writer: records in, JSON lines out to every sink, off the request path.

Theory of operation: each sink has a *lane* — a bounded ``asyncio.Queue`` of
encoded lines and one background task that takes whatever is queued (up to
``batch_size``) and writes it as one batch. :meth:`AuditWriter.submit` encodes
the record once and ``put_nowait``s it into every lane; it is synchronous, so
the request path can never wait on disk, Redis or a full queue.

Coalescing: once a line arrives, the lane waits up to ``linger`` seconds
(default 5 ms) for more before writing, so that one write — for the file and
stdout sinks one hop to a worker thread, for Redis one pipeline — carries many
lines instead of one or two. It does not wait when ``batch_size`` lines are
already queued (a submit that fills a batch ends the wait), nor once
:meth:`aclose` has begun. ``linger=0`` writes as soon as a line arrives.

Rules:

- A full lane drops the line and counts it per sink (``on_drop(sink, n)``,
  by default :func:`gateway.metrics.audit_dropped`). Nothing else is dropped
  silently: lines still queued when :meth:`aclose` gives up are counted too.
- A sink that raises is *failing*: its lane keeps the batch and retries it
  with exponential backoff (``retry_min`` .. ``retry_max``), while new records
  queue behind it and overflow into drops. A success clears the state. Sink
  errors never reach the caller; they are logged once per failure episode
  (type only: an exception text could quote a record).
- :meth:`healthy` is False while any sink is failing. :meth:`writable` is what
  ``audit: required`` mode asks before serving a request: True when audit is
  not required; otherwise only while the writer runs, no sink is failing and
  no lane is full.
- :meth:`aclose` waits up to ``close_timeout`` seconds for the lanes to drain, then stops.
- ``broadcaster`` (optional) also receives every submitted record, for the
  admin SSE stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.audit.broadcast import AuditBroadcaster
from gateway.audit.config import AuditConfig
from gateway.audit.record import encode_record
from gateway.audit.sinks import Sink, build_sinks

log = logging.getLogger("gateway.audit")

DropCounter = Callable[[str, int], None]


def _default_on_drop(sink: str, n: int) -> None:
    import gateway.metrics as metrics  # late: keeps this module importable without the registry

    metrics.audit_dropped(sink, n)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Lane:
    def __init__(self, sink: Sink, queue_size: int) -> None:
        self.sink = sink
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self.failing = False
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None
        self.in_flight = 0  # lines taken from the queue but not yet written
        self.lingering: asyncio.Future[None] | None = None  # set to end the linger early


class AuditWriter:
    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        queue_size: int = 10000,
        required: bool = False,
        batch_size: int = 256,
        linger: float = 0.005,
        retry_min: float = 0.1,
        retry_max: float = 5.0,
        close_timeout: float = 5.0,
        on_drop: DropCounter | None = None,
        broadcaster: AuditBroadcaster | None = None,
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError("audit sink names must be unique")
        self.required = required
        self.batch_size = batch_size
        self.linger = linger
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.close_timeout = close_timeout
        self.broadcaster = broadcaster
        self._on_drop = on_drop or _default_on_drop
        self._lanes = [_Lane(s, queue_size) for s in sinks]
        self._running = False
        self._closed = False

    @classmethod
    def from_config(
        cls,
        config: AuditConfig,
        *,
        state_redis_url: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        required: bool = False,
        broadcaster: AuditBroadcaster | None = None,
        queue_size: int = 10000,
    ) -> AuditWriter:
        """The writer for a validated ``audit:`` key (``required`` ORs with its entry)."""
        sinks = build_sinks(config, state_redis_url=state_redis_url, base_dir=base_dir)
        return cls(
            sinks,
            queue_size=queue_size,
            required=required or config.required,
            broadcaster=broadcaster,
        )

    # --- request path (synchronous, never blocks) ------------------------------------

    def submit(self, record: Mapping[str, Any]) -> bool:
        """Queue ``record`` for every sink; False when any sink had to drop it."""
        if self.broadcaster is not None:
            self.broadcaster.publish(record)
        if not self._lanes:
            return True
        line = encode_record(record)
        ok = True
        for lane in self._lanes:
            if self._closed:
                self._drop(lane, 1)
                ok = False
                continue
            try:
                lane.queue.put_nowait(line)
            except asyncio.QueueFull:
                self._drop(lane, 1)
                ok = False
                continue
            # The lingering lane holds the batch's first line: this one may complete it.
            if lane.lingering is not None and lane.queue.qsize() + 1 >= self.batch_size:
                _wake(lane.lingering)
        return ok

    def healthy(self) -> bool:
        """False while any sink is failing."""
        return not any(lane.failing for lane in self._lanes)

    def writable(self) -> bool:
        """May a request be served? (Always True unless ``audit: required``.)"""
        if not self.required:
            return True
        return (
            self._running
            and not self._closed
            and all(not lane.failing and not lane.queue.full() for lane in self._lanes)
        )

    def dropped(self) -> dict[str, int]:
        """Lines dropped so far, per sink (also reported through ``on_drop``)."""
        return {lane.sink.name: lane.dropped for lane in self._lanes}

    def failing(self) -> list[str]:
        """Names of the sinks currently failing (for ``/readyz``)."""
        return [lane.sink.name for lane in self._lanes if lane.failing]

    # --- lifetime ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._running or self._closed:
            return
        self._running = True
        for lane in self._lanes:
            lane.task = asyncio.create_task(self._run(lane), name=f"audit:{lane.sink.name}")

    async def aclose(self) -> None:
        """Flush what is queued (for at most ``close_timeout`` seconds), then stop and close."""
        if self._closed:
            return
        self._closed = True
        for lane in self._lanes:
            if lane.lingering is not None:
                _wake(lane.lingering)  # drain now: closing is no time to wait for company
        if self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.close_timeout):
                    await asyncio.gather(*(lane.queue.join() for lane in self._lanes))
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
            left = lane.queue.qsize() + lane.in_flight
            if left:
                self._drop(lane, left)
            try:
                await lane.sink.aclose()
            except Exception as exc:  # closing must not stop the other sinks closing
                log.warning("audit sink %s failed to close: %s", lane.sink.name, type(exc).__name__)
        self._running = False

    # --- background -------------------------------------------------------------------

    def _drop(self, lane: _Lane, n: int) -> None:
        lane.dropped += n
        try:
            self._on_drop(lane.sink.name, n)
        except Exception:  # a metrics problem must not break the request path
            log.exception("audit drop counter failed")

    async def _run(self, lane: _Lane) -> None:
        queue = lane.queue
        while True:
            batch = [await queue.get()]
            lane.in_flight = 1  # counted as dropped if aclose gives up while lingering
            if self.linger > 0 and not self._closed and queue.qsize() + 1 < self.batch_size:
                await self._linger(lane)
            while len(batch) < self.batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            lane.in_flight = len(batch)
            await self._write(lane, batch)
            lane.in_flight = 0
            for _ in batch:
                queue.task_done()

    async def _linger(self, lane: _Lane) -> None:
        """Wait ``linger`` seconds for more lines, or until submit or aclose ends it."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self.linger, _wake, waiter)
        lane.lingering = waiter
        try:
            await waiter
        finally:
            lane.lingering = None
            timer.cancel()

    async def _write(self, lane: _Lane, batch: list[bytes]) -> None:
        delay = self.retry_min
        while True:
            try:
                await lane.sink.write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not lane.failing:
                    log.error(
                        "audit sink %s failing (%s); retrying with backoff",
                        lane.sink.name,
                        type(exc).__name__,
                    )
                lane.failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            if lane.failing:
                log.warning("audit sink %s recovered", lane.sink.name)
                lane.failing = False
            return
