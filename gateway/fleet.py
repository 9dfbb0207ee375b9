"""The supervisor's view of its workers, as the admin listener shows it.

With ``workers: N`` the supervisor serves ``admin_listen`` once (see
:mod:`gateway.workers`); each answer comes from the workers, over the private
control socket of each one's own admin app (guarded by the per-run token):

- ``/metrics``: every worker's prometheus-client multiprocess files, merged;
- ``/healthz``: one entry per slot (pid, ready, restarts);
- ``/readyz``: ready when every slot has a ready worker and none reports a
  failing check (each asked every :data:`POLL_INTERVAL`); ``draining`` once the
  supervisor is stopping. A worker that has not answered that question for
  ``limits.worker_hang_timeout`` is hung (its event loop is stuck, yet its
  listener still takes its share of new connections, which would wait forever):
  it is killed, and the supervisor restarts it as it does any dead worker;
- ``POST /admin/reload``: every running worker reloads; 200 only when all did;
- ``/admin/audit/stream``: every worker's stream, relayed while someone listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from gateway import metrics
from gateway.audit.broadcast import AuditBroadcaster

log = logging.getLogger("gateway.workers")

#: Workers' readiness is asked this often.
POLL_INTERVAL: Final = 1.0
RELOAD_TIMEOUT: Final = 60.0
_BASE: Final = "http://worker"


@dataclass(eq=False)
class Slot:
    """One worker position: the process filling it now and its history."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    pid: int | None = None
    started: float = 0.0
    ready: bool = False
    failing: list[str] = field(default_factory=list)
    restarts: int = 0
    quick_deaths: int = 0
    silent_since: float | None = None  # monotonic time of the first unanswered poll
    session: aiohttp.ClientSession | None = None  # to the worker's control socket

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Fleet:
    """The slots' workers seen together; ``stop`` is set once the supervisor stops."""

    def __init__(
        self,
        slots: list[Slot],
        token: str,
        metrics_dir: Path,
        stop: asyncio.Event,
        *,
        hang_timeout: float = 30.0,
    ) -> None:
        self.slots = slots
        self.hang_timeout = hang_timeout
        self.token = token
        self.metrics_dir = metrics_dir
        self.broadcaster = AuditBroadcaster()
        self._stop = stop

    def metrics_body(self) -> bytes:
        return metrics.merged_body(str(self.metrics_dir))

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "workers": [
                {
                    "slot": s.index,
                    "pid": s.pid if s.alive else None,
                    "ready": s.alive and s.ready,
                    "restarts": s.restarts,
                }
                for s in self.slots
            ],
        }

    def readiness(self) -> tuple[bool, list[str]]:
        failing: set[str] = set()
        if self._stop.is_set():
            failing.add("draining")
        for s in self.slots:
            if not (s.alive and s.ready):
                failing.add("workers")
            failing.update(s.failing)
        return not failing, sorted(failing)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def poll_readiness(self) -> None:
        timeout = aiohttp.ClientTimeout(total=POLL_INTERVAL)
        while not self._stop.is_set():
            for s in self.slots:
                if not (s.alive and s.ready and s.session is not None):
                    s.silent_since = None  # (re)starting: its start-up has its own timeout
                    continue
                asked = time.monotonic()
                try:
                    async with s.session.get(_BASE + "/readyz", timeout=timeout) as resp:
                        body = await resp.json()
                    failing = [] if resp.status == 200 else list(body.get("failing", []))
                    s.silent_since = None
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    failing = ["workers"]  # the worker does not answer its supervisor
                    if s.silent_since is None:
                        s.silent_since = asked
                    elif asked - s.silent_since >= self.hang_timeout:
                        self._kill_hung(s, asked - s.silent_since)
                if failing != s.failing and s.alive:
                    log.info("worker %d readiness: %s", s.index, ", ".join(failing) or "ready")
                s.failing = failing
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), POLL_INTERVAL)

    def _kill_hung(self, s: Slot, silent: float) -> None:
        log.error(
            "worker %d (pid %s) has not answered its supervisor for %.0f s: killing it",
            s.index,
            s.pid,
            silent,
        )
        s.silent_since = None
        if s.proc is not None:
            # SIGKILL: a stuck event loop would never run a SIGTERM handler's drain.
            with contextlib.suppress(ProcessLookupError):
                s.proc.kill()

    async def _reload_slot(self, s: Slot) -> dict[str, Any]:
        entry: dict[str, Any] = {"slot": s.index, "pid": s.pid}
        if not (s.alive and s.ready and s.session is not None):
            # A worker that is (re)starting reads the files as they are now.
            return {**entry, "status": None, "state": "starting"}
        try:
            async with s.session.post(
                _BASE + "/admin/reload",
                headers=self._auth(),
                timeout=aiohttp.ClientTimeout(total=RELOAD_TIMEOUT),
            ) as resp:
                body = await resp.json()
                return {**entry, "status": resp.status, **body}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            why = f"worker did not answer: {type(exc).__name__}"
            return {**entry, "status": 502, "errors": [why]}

    async def reload(self) -> tuple[int, dict[str, Any]]:
        """Reload every worker; 200 only when every running worker reloaded."""
        results = await asyncio.gather(*(self._reload_slot(s) for s in self.slots))
        answered = [r for r in results if r["status"] is not None]
        if not answered:
            return 503, {"errors": ["no worker is running"], "workers": results}
        failed = [r for r in answered if r["status"] != 200]
        if failed:
            first = failed[0]
            body = {k: v for k, v in first.items() if k not in ("slot", "pid", "status")}
            log.error("reload failed on %d of %d workers", len(failed), len(answered))
            return int(first["status"]), {**body, "workers": results}
        versions = sorted({str(r["version"]) for r in answered})
        restart = sorted({k for r in answered for k in r.get("restart_required", [])})
        log.info("reloaded %d workers: rules version %s", len(answered), ", ".join(versions))
        return 200, {
            "version": versions[0] if len(versions) == 1 else versions,
            "restart_required": restart,
            "workers": results,
        }

    async def relay_audit(self, s: Slot) -> None:
        """While someone follows the supervisor's audit stream, follow this worker's."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=10)
        while not self._stop.is_set():
            if self.broadcaster.subscribers == 0 or not (s.alive and s.ready):
                await asyncio.sleep(0.2)
                continue
            assert s.session is not None
            try:
                async with s.session.get(
                    _BASE + "/admin/audit/stream", headers=self._auth(), timeout=timeout
                ) as resp:
                    if resp.status != 200:
                        raise aiohttp.ClientError(f"status {resp.status}")
                    event = b""
                    async for raw in resp.content:
                        line = raw.rstrip(b"\r\n")
                        if line.startswith(b"event: "):
                            event = line[7:]
                        elif line.startswith(b"data: ") and event == b"audit":
                            self.broadcaster.publish(orjson.loads(line[6:]))
                        elif line.startswith(b"data: ") and event == b"dropped":
                            self.broadcaster.note_dropped(int(line[6:]))
                        if self.broadcaster.subscribers == 0 or self._stop.is_set():
                            break
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(0.5)
