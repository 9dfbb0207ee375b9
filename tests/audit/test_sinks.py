"""Audit sinks: stdout, file (rotation, reopen after external rotation), redis stream."""

from __future__ import annotations

import io
import os
import stat
import threading
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from gateway.audit.config import AuditConfig
from gateway.audit.sinks import FileSink, RedisStreamSink, StdoutSink, build_sinks
from tests.conftest import RedisServer


def listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def line(i: int, pad: int = 0) -> bytes:
    return orjson.dumps({"request_id": f"r{i:03d}", "pad": "x" * pad}) + b"\n"


async def test_stdout_sink_writes_lines() -> None:
    buf = io.BytesIO()
    sink = StdoutSink(stream=buf)
    await sink.write([line(1), line(2)])
    assert buf.getvalue() == line(1) + line(2)


async def test_file_appends_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(line(0))
    sink = FileSink("file", path)
    await sink.write([line(1)])
    await sink.write([line(2)])
    await sink.aclose()
    assert path.read_bytes() == line(0) + line(1) + line(2)
    fresh = FileSink("file", tmp_path / "new.jsonl")
    await fresh.write([line(1)])
    await fresh.aclose()
    assert stat.S_IMODE(os.stat(tmp_path / "new.jsonl").st_mode) & 0o007 == 0


async def test_file_rotates_by_size_keeping_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    one = len(line(0, pad=50))
    sink = FileSink("file", path, max_bytes=3 * one, backups=2)
    for i in range(10):
        await sink.write([line(i, pad=50)])
    await sink.write([line(i, pad=50) for i in range(10, 14)])  # a batch spanning a rotation
    await sink.aclose()
    files = listing(tmp_path)
    assert list(files) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for data in files.values():
        assert len(data) <= 3 * one
        assert all(orjson.loads(x) for x in data.splitlines())  # never a split record
    ids = [orjson.loads(x)["request_id"] for x in path.read_bytes().splitlines()]
    assert ids == ["r012", "r013"]
    older = (tmp_path / "audit.jsonl.1").read_bytes().splitlines()
    assert [orjson.loads(x)["request_id"] for x in older] == ["r009", "r010", "r011"]


async def test_file_without_backups_truncates(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileSink("file", path, max_bytes=len(line(0)) * 2, backups=0)
    for i in range(5):
        await sink.write([line(i)])
    await sink.aclose()
    assert list(listing(tmp_path)) == ["audit.jsonl"]
    assert path.read_bytes() == line(4)


async def test_file_reopens_after_external_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileSink("file", path)
    await sink.write([line(1)])
    os.rename(path, tmp_path / "audit.jsonl.0")  # logrotate's move
    await sink.write([line(2)])
    assert path.read_bytes() == line(2)
    assert (tmp_path / "audit.jsonl.0").read_bytes() == line(1)
    path.unlink()  # deleted outright
    await sink.write([line(3)])
    await sink.aclose()
    assert path.read_bytes() == line(3)


async def test_redis_stream_xadd_with_maxlen(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        sink = RedisStreamSink("redis_stream", server.url, "gateway:audit", maxlen=5)
        for start in range(0, 300, 100):
            await sink.write([line(i) for i in range(start, start + 100)])
        await sink.aclose()
        client = aioredis.Redis.from_url(server.url)
        try:
            entries = await client.xrevrange("gateway:audit", count=1)
            length = await client.xlen("gateway:audit")
        finally:
            await client.aclose()
        assert entries is not None
        _, fields = entries[0]
        assert fields is not None
        assert orjson.loads(fields[b"record"]) == {"request_id": "r299", "pad": ""}
        assert length < 300  # trimmed (approximately: whole radix nodes only)
    finally:
        server.stop()


def test_build_sinks_from_config(tmp_path: Path) -> None:
    cfg = AuditConfig.model_validate(
        ["stdout", {"file": "audit.jsonl"}, {"redis_stream": "k"}, "required"]
    )
    sinks = build_sinks(cfg, state_redis_url="redis://127.0.0.1:1/0", base_dir=tmp_path)
    assert [type(s).__name__ for s in sinks] == ["StdoutSink", "FileSink", "RedisStreamSink"]
    assert [s.name for s in sinks] == ["stdout", "file", "redis_stream"]
    file_sink = sinks[1]
    assert isinstance(file_sink, FileSink) and file_sink.path == tmp_path / "audit.jsonl"


def test_workers_appending_one_audit_file_rotate_it_once(tmp_path: Path) -> None:
    """Two sinks on one file (two workers): every line survives concurrent rotations."""
    path = tmp_path / "audit.jsonl"
    sinks = [FileSink(f"w{i}", path, max_bytes=2000, backups=1000) for i in range(2)]
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for n in range(300):
                sinks[i].write_sync([b'{"w":%d,"n":%d,"pad":"%s"}\n' % (i, n, b"x" * 40)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in sinks:
        s._close()
    assert not errors
    files = [path, *tmp_path.glob("audit.jsonl.*")]
    written = [raw for f in files for raw in f.read_bytes().splitlines()]
    assert len(written) == 600 and len(set(written)) == 600
    assert all(orjson.loads(raw)["pad"] for raw in written)
    # Each file rotated on its real size, not on one writer's share of it (the other
    # writer may land a line between a size check and a write).
    assert all(f.stat().st_size <= 2000 + 2 * 60 for f in files)
