"""Audit sinks: where JSON lines go (a table of kinds, see :data:`SINKS`).

A sink has a ``name`` (the ``sink`` label of ``gateway_audit_dropped_total``),
``async write(lines)`` taking a batch of encoded records, and ``aclose()``.
Sinks raise on failure; retrying, backoff and drop accounting belong to the
:class:`~gateway.audit.writer.AuditWriter`, which is the only caller.
Blocking file and stdout I/O runs in a worker thread so that a slow disk or a
stalled pipe never stalls the event loop.

File sink rules:

- lines are appended with ``O_APPEND`` and written whole, one ``write`` per
  batch chunk (no user-space buffering, so a crash loses at most the batch in
  flight; there is no ``fsync``);
- before a write, the file is reopened when its path no longer names the open
  inode (logrotate moved it, someone deleted it);
- with ``max_bytes > 0`` the file rotates by size like
  :class:`logging.handlers.RotatingFileHandler` (``audit.jsonl.1`` is the
  newest backup, at most ``backups`` kept; ``backups: 0`` truncates). A record
  is never split across files.
- files are created ``0640``: the trail names subjects and customer ids.
- with ``workers: N`` every worker appends to the same file (``O_APPEND``: a
  batch lands whole) and rotation is decided on the file's real size and done
  under an exclusive ``flock`` on it: a worker that waited for the lock finds
  the path already moved and only reopens, so a file rotates once and no
  backup is overwritten.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Final, Protocol

import redis.asyncio as aioredis

from gateway.audit.config import AuditConfig, FileSinkConfig, RedisStreamSinkConfig, SinkSpec


class Sink(Protocol):
    name: str

    async def write(self, lines: Sequence[bytes]) -> None: ...

    async def aclose(self) -> None: ...


class StdoutSink:
    """JSON lines on standard output (or any binary stream, for tests)."""

    def __init__(self, name: str = "stdout", stream: BinaryIO | None = None) -> None:
        self.name = name
        self._stream = stream

    def _write(self, data: bytes) -> None:
        stream = self._stream if self._stream is not None else sys.stdout.buffer
        stream.write(data)
        stream.flush()

    async def write(self, lines: Sequence[bytes]) -> None:
        await asyncio.to_thread(self._write, b"".join(lines))

    async def aclose(self) -> None:
        return None


class FileSink:
    """Appended JSON lines with size rotation and reopen-after-external-rotation."""

    def __init__(
        self, name: str, path: str | os.PathLike[str], *, max_bytes: int = 0, backups: int = 5
    ) -> None:
        self.name = name
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._size = 0

    # --- blocking part (runs in a thread) ---------------------------------------

    def _open(self) -> None:
        self._close()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        self._fd, self._ino, self._size = fd, (st.st_dev, st.st_ino), st.st_size

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _ensure_open(self) -> int:
        if self._fd is not None:
            try:
                st = os.stat(self.path)
                moved = (st.st_dev, st.st_ino) != self._ino
            except FileNotFoundError:
                moved = True
            if not moved:
                return self._fd
        self._open()
        assert self._fd is not None
        return self._fd

    def _moved(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._ino

    def _rotate(self) -> None:
        if self._fd is not None:
            # Other processes (workers) writing this file take the same lock first.
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if not self._moved():  # else another process rotated it while we waited
                if self.backups > 0:
                    for i in range(self.backups - 1, 0, -1):
                        src = self.path.with_name(f"{self.path.name}.{i}")
                        if src.exists():
                            os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
                    os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
                else:
                    os.truncate(self.path, 0)
        finally:
            self._close()  # releases the lock
        self._open()

    def _write_all(self, data: bytes) -> None:
        fd = self._ensure_open()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        self._size += len(data)

    def write_sync(self, lines: Sequence[bytes]) -> None:
        fd = self._ensure_open()
        if self.max_bytes <= 0:
            self._write_all(b"".join(lines))
            return
        chunk: list[bytes] = []
        size = os.fstat(fd).st_size  # not our own count: other workers append too
        for line in lines:
            if size > 0 and size + len(line) > self.max_bytes:
                if chunk:
                    self._write_all(b"".join(chunk))
                    chunk = []
                self._rotate()
                size = self._size  # 0, or what another worker already wrote after rotating
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write_all(b"".join(chunk))

    # --- async face ---------------------------------------------------------------

    async def write(self, lines: Sequence[bytes]) -> None:
        await asyncio.to_thread(self.write_sync, lines)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close)


class RedisStreamSink:
    """``XADD key MAXLEN ~ maxlen * record <json>``, pipelined per batch."""

    FIELD: Final = "record"

    def __init__(self, name: str, url: str, key: str, *, maxlen: int = 1_000_000) -> None:
        self.name = name
        self.key = key
        self.maxlen = maxlen
        # Short timeouts: a hung Redis must turn into a failing sink, not a stuck task.
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=30
        )

    async def write(self, lines: Sequence[bytes]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for line in lines:
            pipe.xadd(
                self.key, {self.FIELD: line.rstrip(b"\n")}, maxlen=self.maxlen, approximate=True
            )
        await pipe.execute()

    async def aclose(self) -> None:
        await self._client.aclose()


def _stdout(name: str, spec: SinkSpec, redis_url: str | None, base: Path | None) -> Sink:
    return StdoutSink(name)


def _file(name: str, spec: SinkSpec, redis_url: str | None, base: Path | None) -> Sink:
    assert isinstance(spec, FileSinkConfig)
    path = Path(spec.file)
    if base is not None and not path.is_absolute():
        path = base / path
    return FileSink(name, path, max_bytes=spec.max_bytes, backups=spec.backups)


def _redis(name: str, spec: SinkSpec, redis_url: str | None, base: Path | None) -> Sink:
    assert isinstance(spec, RedisStreamSinkConfig)
    url = spec.url or redis_url
    if url is None:
        raise ValueError(f"audit sink {name}: redis_stream needs a url (no state Redis to use)")
    return RedisStreamSink(name, url, spec.redis_stream, maxlen=spec.maxlen)


_Factory = Callable[[str, SinkSpec, "str | None", "Path | None"], Sink]

#: Sink kind -> factory (the kind is the entry's string, or the config model's type).
SINKS: Final[dict[object, _Factory]] = {
    "stdout": _stdout,
    FileSinkConfig: _file,
    RedisStreamSinkConfig: _redis,
}


def build_sinks(
    config: AuditConfig,
    *,
    state_redis_url: str | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> list[Sink]:
    """One sink per configured entry; relative file paths resolve against ``base_dir``."""
    base = Path(base_dir) if base_dir is not None else None
    sinks: list[Sink] = []
    for name, spec in config.sinks:
        kind: object = spec if isinstance(spec, str) else type(spec)
        sinks.append(SINKS[kind](name, spec, state_redis_url, base))
    return sinks
