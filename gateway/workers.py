"""``workers: N``: N gateway processes serving one port, under a supervisor.

Theory of operation
===================

``gateway serve`` with ``workers: 1`` (the default) is one process
(:func:`gateway.server.serve`). With ``workers: N > 1`` it becomes the
*supervisor*, which serves no request itself:

- **Listeners.** For each worker *slot* the supervisor binds the ``listen``
  address with ``SO_REUSEPORT`` (a bind error is reported before any worker
  starts; port 0 is resolved once and every slot then binds that port), hands
  the listening socket to a fresh interpreter (``python -m gateway.worker``,
  ``pass_fds``) and closes its own copy. The kernel spreads new connections
  over the workers' sockets; a worker that dies takes only its socket with it,
  so new connections go to the live workers until its replacement binds again.
- **Workers** load ``gateway.yaml`` and the rules themselves, exactly as a
  single process does (so a restarted worker reads the files as they are now),
  run :class:`gateway.server.Gateway` on the inherited sockets and report
  ready on a pipe. Their admin app is served on a private unix socket in the
  run directory (mode 0700), guarded by a random per-run token, for the
  supervisor only. A worker ignores SIGINT (a terminal's Ctrl-C reaches the
  whole process group; the supervisor decides) and drains by itself if the
  supervisor disappears.
- **Restarts.** A worker that exits while the supervisor is not stopping is
  restarted: at once after a stable run, with a backoff doubling from
  :data:`RESTART_DELAY_MIN` to :data:`RESTART_DELAY_MAX` while it keeps dying
  within :data:`STABLE_AFTER` seconds. So is a worker that has not answered its
  supervisor for ``limits.worker_hang_timeout``: it is killed first (see
  :mod:`gateway.fleet`). A worker that fails before its first
  ready during start-up stops the whole start (exit 1), like a single process
  that cannot start.
- **SIGTERM / SIGINT** to the supervisor: ``/readyz`` says ``draining``, every
  worker gets SIGTERM and drains as a single process does (stop accepting,
  finish in-flight requests within ``limits.shutdown_timeout``), stragglers get
  SIGKILL after that plus :data:`KILL_MARGIN`; exit 0 when every worker exited
  0. **SIGHUP** reloads every worker, like ``POST /admin/reload``.
- **The admin listener** (``admin_listen``) is served once, by the supervisor:
  ``/metrics`` merges every worker's prometheus-client multiprocess files (a
  fresh directory per run, removed on exit; counters of dead workers stay in
  the totals so nothing goes backwards; gauges are ``livemin``/``livemax``
  over live workers); ``/healthz`` lists the workers (slot, pid, ready,
  restarts); ``/readyz`` is ready when every slot has a ready worker and no
  worker reports a failing check (polled every ``fleet.POLL_INTERVAL``);
  ``POST /admin/reload`` reloads every worker and answers with each one's
  result; ``/admin/audit/stream`` merges the workers' streams, relayed only
  while someone listens.
- **Standard output** of every worker (the ``stdout`` audit sink) is a pipe
  to the supervisor, which writes whole lines only: JSON lines from different
  workers never interleave, whatever their length. Standard error (logs) is
  shared; log lines name the worker.

Quotas are shared between workers only through ``state.redis``;
:func:`gateway.runtime.compile_config` refuses ``workers > 1`` with in-process
state when a served policy has quotas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from gateway import metrics
from gateway.admin import create_admin_app
from gateway.config import Config, parse_listen
from gateway.fleet import Fleet, Slot
from gateway.worker import CONTROL_TOKEN_ENV, READY_MARK

log = logging.getLogger("gateway.workers")

#: A worker that lived this long is restarted without delay.
STABLE_AFTER: Final = 10.0
RESTART_DELAY_MIN: Final = 0.5
RESTART_DELAY_MAX: Final = 10.0
#: How long a starting worker may take to report ready.
START_TIMEOUT: Final = 60.0
#: Past ``limits.shutdown_timeout``, how long a draining worker has before SIGKILL.
KILL_MARGIN: Final = 5.0
_MAX_PENDING_LINE: Final = 16 * 1024 * 1024


def bind_listeners(
    listen: str, port: int | None = None, backlog: int = 1024
) -> list[socket.socket]:
    """Listening ``SO_REUSEPORT`` sockets for ``listen`` (one per address it resolves to).

    ``port`` overrides the configured port (the one the first slot got for port 0).
    """
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Linux and BSDs have it
        raise OSError("workers > 1 needs SO_REUSEPORT, which this platform lacks")
    host, p = parse_listen(listen)
    if port is not None:
        p = port
    infos = socket.getaddrinfo(host, p, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen: set[tuple[Any, ...]] = set()
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            s = socket.socket(family, type_, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if p == 0 and socks[0] is not s:
                addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
            s.bind(addr)
            s.listen(backlog)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


class Supervisor:
    def __init__(self, config: Config, config_path: str, *, verbose: bool = False) -> None:
        self.config = config
        self.config_path = config_path
        self.verbose = verbose
        self.run_dir = Path(tempfile.mkdtemp(prefix="gateway-"))  # 0700
        self.metrics_dir = self.run_dir / "metrics"
        self.metrics_dir.mkdir()
        self.control_dir = self.run_dir / "control"
        self.control_dir.mkdir()
        self.token = secrets.token_urlsafe(32)
        self.slots = [Slot(i) for i in range(config.workers)]
        self.port: int | None = None
        self.addresses: list[tuple[str, int]] = []
        self.admin_addresses: list[tuple[str, int]] = []
        self.starting = True
        self.stopping = False
        self.exit_codes: dict[int, int] = {}  # pid -> code, for workers that exited while stopping
        self._admin: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._out_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        # The admin listener's answers, from the workers (gateway.fleet).
        self.fleet = Fleet(
            self.slots,
            self.token,
            self.metrics_dir,
            self._stop,
            hang_timeout=config.limits.worker_hang_timeout,
        )
        self._failed: asyncio.Future[str] | None = None

    # --- worker processes ---------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        env.pop("prometheus_multiproc_dir", None)
        env[CONTROL_TOKEN_ENV] = self.token
        return env

    def control_path(self, slot: Slot) -> str:
        return str(self.control_dir / f"w{slot.index}.sock")

    async def _spawn(self, slot: Slot) -> tuple[asyncio.subprocess.Process, int]:
        """Bind, start a worker on the sockets; returns it and the ready pipe's read end."""
        socks = bind_listeners(self.config.listen, self.port)
        read_fd, write_fd = os.pipe()
        fds = [s.fileno() for s in socks]
        args = [
            sys.executable,
            "-m",
            "gateway.worker",
            "-c",
            self.config_path,
            "--slot",
            str(slot.index),
            "--ready-fd",
            str(write_fd),
            "--control",
            self.control_path(slot),
            "--parent",
            str(os.getpid()),
        ]
        for fd in fds:
            args += ["--listen-fd", str(fd)]
        if self.verbose:
            args.append("-v")
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                env=self._env(),
                pass_fds=(*fds, write_fd),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
            for s in socks:
                s.close()  # the worker holds them now: when it dies, they close
        return proc, read_fd

    async def _await_ready(self, proc: asyncio.subprocess.Process, read_fd: int) -> bool:
        """True once the worker wrote its ready mark; False if it exited (or was killed
        for not being ready within :data:`START_TIMEOUT`)."""

        def too_slow() -> None:
            log.error("worker pid %d did not report ready in %.0f s", proc.pid, START_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

        timer = asyncio.get_running_loop().call_later(START_TIMEOUT, too_slow)
        try:
            # The thread returns once the worker has written its mark or exited (EOF).
            mark = await asyncio.to_thread(_read_and_close, read_fd)
        finally:
            timer.cancel()
        return mark == READY_MARK

    async def _run_slot(self, slot: Slot) -> None:
        """Keep a worker in ``slot`` until the supervisor stops."""
        while not self.stopping:
            try:
                proc, read_fd = await self._spawn(slot)
            except OSError as exc:
                log.error("worker %d: cannot start: %s", slot.index, exc)
                if self.starting:
                    self._fail(f"worker {slot.index}: cannot start: {exc}")
                    return
                slot.quick_deaths += 1
                await self._backoff(slot)
                continue
            slot.proc, slot.pid, slot.started = proc, proc.pid, time.monotonic()
            slot.ready, slot.failing = False, []
            assert proc.stdout is not None
            relay = self._spawn_task(self._relay_stdout(proc.stdout))
            log.info("worker %d started: pid %d", slot.index, proc.pid)
            if await self._await_ready(proc, read_fd):
                slot.ready = True
                if slot.session is None:
                    slot.session = aiohttp.ClientSession(
                        connector=aiohttp.UnixConnector(path=self.control_path(slot))
                    )
                if self.stopping:  # it was starting while the others got SIGTERM
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
            await relay
            slot.ready = False
            self._worker_gone(slot, proc.pid)
            if self.stopping:
                self.exit_codes[proc.pid] = code
                return
            if self.starting:
                self._fail(f"worker {slot.index} (pid {proc.pid}) exited during start-up")
                return
            log.error("worker %d (pid %d) %s; restarting it", slot.index, proc.pid, _why(code))
            lived = time.monotonic() - slot.started
            slot.quick_deaths = slot.quick_deaths + 1 if lived < STABLE_AFTER else 0
            slot.restarts += 1
            await self._backoff(slot)

    async def _backoff(self, slot: Slot) -> None:
        if slot.quick_deaths == 0:
            return
        delay = min(RESTART_DELAY_MAX, RESTART_DELAY_MIN * 2 ** (slot.quick_deaths - 1))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    def _worker_gone(self, slot: Slot, pid: int) -> None:
        metrics.worker_exited(pid, str(self.metrics_dir))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path(slot))

    def _fail(self, reason: str) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(reason)

    async def _relay_stdout(self, stream: asyncio.StreamReader) -> None:
        """Copy a worker's standard output to ours, whole lines only."""
        pending = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            data = pending + chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) < _MAX_PENDING_LINE:
                pending = data
                continue
            cut = cut or len(data)
            pending = data[cut:]
            await self._write_out(data[:cut])
        if pending:
            await self._write_out(pending + b"\n")

    async def _write_out(self, data: bytes) -> None:
        async with self._out_lock:  # one writer at a time: lines never interleave
            try:
                await asyncio.to_thread(_write_all, sys.stdout.fileno(), data)
            except OSError as exc:  # stdout closed: the workers' sinks will count drops
                log.error("cannot write to standard output: %s", exc)

    async def _start_admin(self) -> None:
        cfg = self.config
        if cfg.admin_listen is None:
            return
        token = os.environ.get(cfg.admin_token_env) if cfg.admin_token_env else None
        app = create_admin_app(
            token=token,
            metrics_body=self.fleet.metrics_body,
            ready=self.fleet.readiness,
            reload=self.fleet.reload,
            audit_broadcast=self.fleet.broadcaster,
            health=self.fleet.health,
        )
        self._admin = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._admin.setup()
        host, port = parse_listen(cfg.admin_listen)
        site = web.TCPSite(self._admin, host, port)
        await site.start()
        for sock in getattr(site._server, "sockets", None) or []:
            self.admin_addresses.append(sock.getsockname()[:2])

    # --- the supervisor's life --------------------------------------------------------

    def _spawn_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        try:
            # Bind errors surface here, before any worker starts; port 0 is resolved once.
            socks = bind_listeners(self.config.listen)
            self.port = socks[0].getsockname()[1]
            self.addresses = [sock.getsockname()[:2] for sock in socks]
            for sock in socks:
                sock.close()
            await self._start_admin()
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            await self._cleanup()
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn_task(self.fleet.reload()))
        slot_tasks = [self._spawn_task(self._run_slot(s)) for s in self.slots]
        code = 0
        try:
            started = await self._wait_started()
            if self._stop.is_set():
                log.info("stopped during start-up")
            elif started is not None:
                log.error("start-up failed: %s", started)
                code = 1
            else:
                self.starting = False
                self._spawn_task(self.fleet.poll_readiness())
                for s in self.slots:
                    self._spawn_task(self.fleet.relay_audit(s))
                for host, port in self.addresses:
                    log.info("listening on %s:%s with %d workers", host, port, len(self.slots))
                await self._stop.wait()
        finally:
            log.info("shutting down: draining in-flight requests in every worker")
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            code = max(code, await self._shutdown(slot_tasks))
            await self._cleanup()
        return code

    async def _wait_started(self) -> str | None:
        """None once every slot is ready; else why the start failed."""
        assert self._failed is not None
        while True:
            if all(s.alive and s.ready for s in self.slots):
                return None
            if self._failed.done():
                return self._failed.result()
            if self._stop.is_set():
                return None
            await asyncio.sleep(0.05)

    async def _shutdown(self, slot_tasks: list[asyncio.Task[None]]) -> int:
        self.stopping = True
        self._stop.set()
        live = [s.proc for s in self.slots if s.alive and s.proc is not None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        grace = self.config.limits.shutdown_timeout + KILL_MARGIN
        _, pending = await asyncio.wait(slot_tasks, timeout=grace)
        killed = False
        for s in self.slots:
            if s.alive and s.proc is not None:
                log.error("worker %d (pid %d) still running: killing it", s.index, s.proc.pid)
                killed = True
                with contextlib.suppress(ProcessLookupError):
                    s.proc.kill()
        if pending:
            await asyncio.wait(pending, timeout=KILL_MARGIN)
        failed = [pid for pid, c in self.exit_codes.items() if c != 0]
        for pid in failed:
            log.error("worker pid %d %s", pid, _why(self.exit_codes[pid]))
        return 1 if killed or failed else 0

    async def _cleanup(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        for s in self.slots:
            if s.session is not None:
                await s.session.close()
                s.session = None
        shutil.rmtree(self.run_dir, ignore_errors=True)


def supervise(config: Config, config_path: str, *, verbose: bool = False) -> int:
    """Run ``config.workers`` workers until SIGTERM/SIGINT; the exit code."""
    return asyncio.run(Supervisor(config, config_path, verbose=verbose).run())


def _why(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_and_close(fd: int) -> bytes:
    try:
        return os.read(fd, 64)
    finally:
        os.close(fd)
