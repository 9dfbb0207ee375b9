"""AuditWriter: batching, overflow drops without blocking, failing sinks, required mode."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from gateway.audit.broadcast import AuditBroadcaster
from gateway.audit.config import AuditConfig
from gateway.audit.sinks import RedisStreamSink
from gateway.audit.writer import AuditWriter
from tests.conftest import RedisServer, wait_for


class MemorySink:
    def __init__(self, name: str = "mem") -> None:
        self.name = name
        self.batches: list[list[bytes]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False
        self.attempts = 0
        self.closed = False

    @property
    def lines(self) -> list[bytes]:
        return [line for b in self.batches for line in b]

    async def write(self, lines: Sequence[bytes]) -> None:
        self.attempts += 1
        await self.gate.wait()
        if self.fail:
            raise OSError("disk full")
        self.batches.append(list(lines))

    async def aclose(self) -> None:
        self.closed = True


class Drops:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, sink: str, n: int) -> None:
        self.counts[sink] = self.counts.get(sink, 0) + n


def rec(i: int, subject: str = "s") -> dict[str, object]:
    return {"request_id": f"r{i}", "subject": subject}


async def test_submit_is_synchronous_and_batches_reach_every_sink() -> None:
    a, b = MemorySink("a"), MemorySink("b")
    writer = AuditWriter([a, b], on_drop=Drops())
    assert not inspect.iscoroutinefunction(writer.submit)
    await writer.start()
    for i in range(50):
        assert writer.submit(rec(i)) is True
    await writer.aclose()
    for sink in (a, b):
        assert [orjson.loads(x)["request_id"] for x in sink.lines] == [f"r{i}" for i in range(50)]
        assert len(sink.batches) < 50  # batched
        assert sink.closed


async def test_a_lone_record_is_written_without_waiting_for_company() -> None:
    sink = MemorySink()
    writer = AuditWriter([sink], on_drop=Drops())  # the default linger
    await writer.start()
    writer.submit(rec(1))
    await wait_for(lambda: len(sink.lines) == 1)
    assert sink.batches == [[orjson.dumps(rec(1), option=orjson.OPT_APPEND_NEWLINE)]]
    await writer.aclose()


async def test_lines_arriving_while_the_lane_lingers_share_one_write() -> None:
    # A linger far longer than any test: the batch can only be written because the
    # batch_size-th line ends the wait.
    sink = MemorySink()
    writer = AuditWriter([sink], batch_size=10, linger=3600, on_drop=Drops())
    await writer.start()
    for i in range(25):
        writer.submit(rec(i))
        await asyncio.sleep(0)  # one request per loop turn, as they arrive
    await wait_for(lambda: len(sink.lines) == 20)
    assert [len(b) for b in sink.batches] == [10, 10]
    # The last 5 are waiting for company; closing writes them at once, none dropped.
    await asyncio.wait_for(writer.aclose(), 30)  # a safety net: without the wake, 1 hour
    assert [orjson.loads(x)["request_id"] for x in sink.lines] == [f"r{i}" for i in range(25)]
    assert writer.dropped() == {"mem": 0}


async def test_linger_zero_writes_each_line_as_it_comes() -> None:
    sink = MemorySink()
    writer = AuditWriter([sink], linger=0, on_drop=Drops())
    await writer.start()
    for i in range(3):
        writer.submit(rec(i))
        await wait_for(lambda i=i: len(sink.lines) == i + 1)
    assert [len(b) for b in sink.batches] == [1, 1, 1]
    await writer.aclose()


async def test_full_queue_drops_and_counts_without_blocking() -> None:
    slow, fast = MemorySink("slow"), MemorySink("fast")
    slow.gate.clear()  # the slow sink never finishes its first write
    drops = Drops()
    writer = AuditWriter([slow, fast], queue_size=5, on_drop=drops, close_timeout=0.2)
    await writer.start()
    writer.submit(rec(0))
    await wait_for(lambda: slow.attempts == 1)  # r0 is in flight, the queue is empty
    fast_queue = writer._lanes[1].queue
    results, spent = [], 0.0
    for i in range(1, 21):
        started = time.perf_counter()
        results.append(writer.submit(rec(i)))
        spent += time.perf_counter() - started
        await wait_for(fast_queue.empty)  # the fast sink keeps up; only the slow one overflows
    assert spent < 0.05
    assert results == [True] * 5 + [False] * 15
    assert drops.counts == {"slow": 15}
    assert writer.dropped() == {"slow": 15, "fast": 0}
    await wait_for(lambda: len(fast.lines) == 21)
    await writer.aclose()  # the slow sink cannot drain: what is left counts as dropped
    assert drops.counts == {"slow": 21}


async def test_failing_sink_never_raises_and_retries_the_batch() -> None:
    sink = MemorySink("disk")
    sink.fail = True
    writer = AuditWriter([sink], required=True, retry_min=0.01, retry_max=0.02, on_drop=Drops())
    await writer.start()
    assert writer.writable()
    assert writer.submit(rec(1)) is True
    await wait_for(lambda: not writer.healthy())
    assert writer.failing() == ["disk"]
    assert not writer.writable()  # audit: required -> the server answers 503
    await wait_for(lambda: sink.attempts >= 3)  # backing off and retrying
    sink.fail = False
    await wait_for(writer.healthy)
    assert writer.writable()
    assert [orjson.loads(x)["request_id"] for x in sink.lines] == ["r1"]  # nothing lost
    await writer.aclose()


async def test_writable_without_required_is_always_true() -> None:
    sink = MemorySink()
    sink.fail = True
    writer = AuditWriter([sink], retry_min=0.01, on_drop=Drops(), close_timeout=0.1)
    await writer.start()
    writer.submit(rec(1))
    await wait_for(lambda: not writer.healthy())
    assert writer.writable()
    await writer.aclose()


async def test_required_writer_is_not_writable_before_start_or_after_close() -> None:
    writer = AuditWriter([MemorySink()], required=True, on_drop=Drops())
    assert not writer.writable()
    await writer.start()
    assert writer.writable()
    await writer.aclose()
    assert not writer.writable()
    assert writer.submit(rec(1)) is False


async def test_publishes_to_broadcaster() -> None:
    broadcaster = AuditBroadcaster()
    sub = broadcaster.subscribe({"subject": ["alice"]})
    writer = AuditWriter([], broadcaster=broadcaster)
    writer.submit(rec(1, "bob"))
    writer.submit(rec(2, "alice"))
    assert orjson.loads(await sub.get() or b"") == rec(2, "alice")
    assert sub.queue.empty()


async def test_redis_outage_is_survived(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        drops = Drops()
        sink = RedisStreamSink("redis_stream", server.url, "audit")
        writer = AuditWriter([sink], retry_min=0.02, retry_max=0.1, on_drop=drops)
        await writer.start()
        writer.submit(rec(1))
        # Written means in the stream: an empty queue only says the lane took it, and a
        # record in flight when the server stops is (rightly) sent again after restart.
        client = aioredis.Redis.from_url(server.url)
        try:
            for _ in range(500):
                if await client.xlen("audit") == 1:
                    break
                await asyncio.sleep(0.01)
        finally:
            await client.aclose()
        server.stop()
        writer.submit(rec(2))
        await wait_for(lambda: not writer.healthy())
        server.start()  # same port: the stream starts empty (no persistence)
        await wait_for(writer.healthy, within=10)
        await writer.aclose()
        client = aioredis.Redis.from_url(server.url)
        try:
            entries = await client.xrange("audit")
        finally:
            await client.aclose()
        assert entries is not None
        got = [orjson.loads(f[b"record"])["request_id"] for _, f in entries if f is not None]
        assert got == ["r2"]
        assert drops.counts == {}
    finally:
        server.stop()


async def test_from_config(tmp_path: Path) -> None:
    cfg = AuditConfig.model_validate([{"file": "audit.jsonl"}, "required"])
    writer = AuditWriter.from_config(cfg, base_dir=tmp_path)
    assert writer.required
    await writer.start()
    writer.submit(rec(1))
    await writer.aclose()
    assert orjson.loads((tmp_path / "audit.jsonl").read_bytes()) == rec(1)
