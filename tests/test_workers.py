"""`workers: N`: a real `gateway serve` supervisor with real worker processes on real sockets.

Which worker served what is read from the workers' own prometheus-client files
(``counter_<pid>.db`` in the run directory, which the tests place under their
own ``TMPDIR``); the admin listener's ``/healthz`` names the worker pids.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway.cli import main
from tests.conftest import RedisServer, free_port, start_app

TOKEN = "workers-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class Served:
    """A `gateway serve` subprocess and what the test needs to watch it."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, admin: int, run: Path) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin}"
        self.port = port
        self.run = run

    async def get_json(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.admin + path) as resp:
            return resp.status, await resp.json()

    async def workers(self) -> list[dict[str, Any]]:
        _, body = await self.get_json("/healthz")
        workers: list[dict[str, Any]] = body["workers"]
        return workers

    async def metric(self, name: str, **labels: str) -> float:
        async with aiohttp.ClientSession() as s, s.get(self.admin + "/metrics") as resp:
            text = await resp.text()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def log(self) -> str:
        return (self.run.parent / "stderr").read_text()

    async def audited(self, n: int) -> bool:
        """n audit lines reached the supervisor's standard output."""
        return (self.run.parent / "stdout").read_bytes().count(b"\n") == n

    async def counted(self, n: int) -> bool:
        return sum(self.requests_by_pid().values()) == n

    def requests_by_pid(self) -> dict[int, float]:
        """gateway_requests_total per worker process, from each worker's own file."""
        out: dict[int, float] = {}
        for f in self.run.glob("gateway-*/metrics/counter_*.db"):
            pid = int(f.stem.rsplit("_", 1)[1])
            for metric in MultiProcessCollector.merge([str(f)]):
                for sample in metric.samples:
                    if sample.name == "gateway_requests_total":
                        out[pid] = out.get(pid, 0.0) + sample.value
        return out


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def run_dirs(root: Path) -> list[Path]:
    return list(root.glob("gateway-*"))


async def until(check: Callable[[], Any], gw: Served | None = None, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if await check():
                return
        except (OSError, aiohttp.ClientError):
            pass
        if time.monotonic() > deadline:
            log = gw.log() if gw is not None else ""
            raise AssertionError(f"condition not met in time; gateway log:\n{log}")
        await asyncio.sleep(0.1)


def write_config(
    tmp_path: Path,
    upstream: str,
    extra: str = "",
    port: int | None = None,
    limits: str = "shutdown_timeout: 10",
) -> tuple[Path, int, int]:
    """A `workers: 2` gateway.yaml in tmp_path on free ports (or the given listen
    port): the path, the listen port and the admin port."""
    port = free_port() if port is None else port
    admin = free_port()
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"listen: 127.0.0.1:{port}\n"
        "workers: 2\n"
        f"admin_listen: 127.0.0.1:{admin}\n"
        "admin_token_env: WORKERS_ADMIN_TOKEN\n"
        f"upstreams: {{u: {{url: '{upstream}'}}}}\n"
        f"limits: {{{limits}}}\n" + extra,
        encoding="utf-8",
    )
    return path, port, admin


async def start_served(
    procs: list[Served],
    tmp_path: Path,
    config: Path,
    port: int,
    admin: int,
    env: dict[str, str] | None = None,
) -> Served:
    """Start `gateway serve` (registered in ``procs`` at once, so that teardown kills it
    even if it never gets ready) and wait until its admin listener says ready."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "-c",
        str(config),
        stdout=(tmp_path / "stdout").open("wb"),
        stderr=(tmp_path / "stderr").open("wb"),
        env={
            **os.environ,
            "TMPDIR": str(run),
            "WORKERS_ADMIN_TOKEN": TOKEN,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        },
    )
    served = Served(proc, port, admin, run)
    procs.append(served)

    async def ready() -> bool:
        if proc.returncode is not None:
            raise AssertionError((tmp_path / "stderr").read_text())
        status, _ = await served.get_json("/readyz")
        return status == 200

    await until(ready, served)
    return served


@pytest.fixture
async def served_procs() -> AsyncIterator[list[Served]]:
    procs: list[Served] = []
    yield procs
    for p in procs:  # a test that failed half-way: drain, then kill
        if p.proc.returncode is None:
            p.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(p.proc.wait(), 15)
            except TimeoutError:
                p.proc.kill()  # its workers drain by themselves once it is gone
                await p.proc.wait()


async def fresh_connections(url: str, n: int, **kwargs: Any) -> list[int]:
    """n requests, each on its own connection (the kernel spreads connections, not requests)."""
    statuses = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:
        for _ in range(n):
            async with s.get(url, **kwargs) as resp:
                await resp.read()
                statuses.append(resp.status)
    return statuses


HELLO_ROUTE = "routes: [{name: hello, path: '/hello/**', upstream: u, auth: none}]\n"


@pytest.fixture
async def hello_upstream() -> AsyncIterator[str]:
    """An upstream answering every GET with its path (for the `hello` route)."""

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": request.path})

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner, url = await start_app(app)
    yield url
    await runner.cleanup()


async def test_two_workers_share_the_port_metrics_reload_and_restart(
    tmp_path: Path, served_procs: list[Served], hello_upstream: str
) -> None:
    cfg, port, admin = write_config(
        tmp_path,
        hello_upstream,
        HELLO_ROUTE + "audit: [stdout]\n",
    )
    gw = await start_served(served_procs, tmp_path, cfg, port, admin)
    workers = await gw.workers()
    pids = {w["pid"] for w in workers}
    assert len(pids) == 2 and all(w["ready"] for w in workers)
    assert {parent_of(pid) for pid in pids} == {gw.proc.pid}  # the supervisor's children

    assert await fresh_connections(gw.url + "/hello/x", 40) == [200] * 40
    # A request is counted just after its response is sent: wait for the last one.
    await until(lambda: gw.counted(40), gw)
    by_pid = gw.requests_by_pid()
    assert set(by_pid) == pids, by_pid
    assert all(n > 0 for n in by_pid.values()), by_pid  # both workers served
    assert sum(by_pid.values()) == 40
    # One scrape of the admin listener: every worker's requests, one state gauge.
    assert await gw.metric("gateway_requests_total", route="hello", status="200") == 40
    assert await gw.metric("gateway_state_up") == 1

    # Reload reaches every worker, through the admin API and by SIGHUP.
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.admin + "/admin/reload", headers=ADMIN) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        assert sorted(w["pid"] for w in body["workers"]) == sorted(pids)
        assert all(w["status"] == 200 for w in body["workers"])
        async with s.post(gw.admin + "/admin/reload") as resp:
            assert resp.status == 401
    gw.proc.send_signal(signal.SIGHUP)

    async def reloaded_twice() -> bool:  # per worker: the API call, then SIGHUP
        return await gw.metric("gateway_rules_reloads_total", result="ok") == 4

    await until(reloaded_twice, gw)

    # The supervisor's audit stream merges every worker's records.
    assert await audit_stream_ids(gw, 20) == 20
    await until(lambda: gw.counted(60), gw)
    # (SIGKILL below loses what a worker has not written yet, as it would alone.)
    await until(lambda: gw.audited(60), gw)

    # A killed worker is replaced; the port keeps serving; its counts stay in the totals.
    victim = workers[0]
    os.kill(victim["pid"], signal.SIGKILL)

    async def replaced() -> bool:
        w = (await gw.workers())[victim["slot"]]
        return bool(w["pid"] not in (None, victim["pid"]) and w["ready"])

    await until(replaced, gw)
    w = (await gw.workers())[victim["slot"]]
    assert w["restarts"] == 1
    await until(lambda: _status(gw, "/readyz", 200), gw)
    assert await fresh_connections(gw.url + "/hello/y", 20) == [200] * 20
    await until(lambda: gw.counted(80), gw)
    assert await gw.metric("gateway_requests_total", route="hello") == 80
    assert await gw.metric("gateway_state_up") == 1  # the dead worker's gauge is gone

    gw.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(gw.proc.wait(), 20) == 0
    assert not list(gw.run.iterdir())  # the run directory (metrics, sockets) is removed
    # Audit on stdout went through the supervisor: whole JSON lines, one per request.
    lines = (tmp_path / "stdout").read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    assert len(records) == 80
    assert {r["route"] for r in records} == {"hello"}


async def test_a_hung_worker_is_killed_and_replaced(
    tmp_path: Path, served_procs: list[Served], hello_upstream: str
) -> None:
    cfg, port, admin = write_config(
        tmp_path,
        hello_upstream,
        HELLO_ROUTE,
        limits="shutdown_timeout: 10, worker_hang_timeout: 1",
    )
    gw = await start_served(served_procs, tmp_path, cfg, port, admin)
    victim = (await gw.workers())[0]
    # Stopped, not dead: its listener still takes connections it will never answer.
    os.kill(victim["pid"], signal.SIGSTOP)
    try:

        async def replaced() -> bool:
            w = (await gw.workers())[victim["slot"]]
            return bool(w["pid"] not in (None, victim["pid"]) and w["ready"])

        await until(replaced, gw)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim["pid"], signal.SIGCONT)
    assert (await gw.workers())[victim["slot"]]["restarts"] == 1
    assert "has not answered its supervisor" in gw.log()
    await until(lambda: _status(gw, "/readyz", 200), gw)
    assert await fresh_connections(gw.url + "/hello/z", 20) == [200] * 20


async def _status(gw: Served, path: str, expected: int) -> bool:
    status, _ = await gw.get_json(path)
    return status == expected


async def audit_stream_ids(gw: Served, n: int) -> int:
    """Follow /admin/audit/stream while n requests (fresh connections) are served;
    how many of their request ids came through."""
    ids = {uuid.uuid4().hex for _ in range(n)}
    seen: set[str] = set()
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.admin + "/admin/audit/stream", headers=ADMIN) as stream,
    ):
        assert stream.status == 200

        async def read() -> None:
            async for line in stream.content:
                if line.startswith(b"data: {"):
                    seen.add(orjson.loads(line[6:])["request_id"])
                    if ids <= seen:
                        return

        reader = asyncio.create_task(read())
        await asyncio.sleep(1.0)  # the supervisor connects to each worker's stream
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as c:
            for rid in ids:
                async with c.get(gw.url + "/hello/a", headers={"X-Request-ID": rid}) as r:
                    assert r.status == 200
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 10)
    return len(ids & seen)


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_sigterm_drains_in_flight_requests_in_every_worker(
    tmp_path: Path, served_procs: list[Served]
) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(1.5)
        return web.json_response({"done": True})

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner, up = await start_app(app)
    cfg, port, admin = write_config(
        tmp_path,
        up,
        "routes: [{name: a, path: /slow, upstream: u, auth: none}]\n",
    )
    try:
        gw = await start_served(served_procs, tmp_path, cfg, port, admin)
        async with aiohttp.ClientSession() as s:
            in_flight = asyncio.create_task(s.get(gw.url + "/slow"))
            await asyncio.wait_for(started.wait(), 10)
            gw.proc.send_signal(signal.SIGTERM)
            # Every worker stops accepting at once (well before the slow request ends);
            # the admin listener stays up and says why until the end.
            await until(lambda: refused(port), gw, within=1.0)
            status, body = await gw.get_json("/readyz")
            assert status == 503 and "draining" in body["failing"]
            resp = await in_flight
            assert resp.status == 200
            assert await resp.json() == {"done": True}
        assert await asyncio.wait_for(gw.proc.wait(), 20) == 0
    finally:
        await runner.cleanup()


async def test_two_workers_share_one_quota_through_redis(
    tmp_path: Path, served_procs: list[Served], redis_server: RedisServer
) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": 1, "name": "x"}]})

    app = web.Application()
    app.router.add_get("/c", page)
    runner, up = await start_app(app)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "levels.yaml").write_text("levels: [public, secret]\n")
    quota = f"q{uuid.uuid4().hex[:8]}"
    (rules / "customer.yaml").write_text(
        "policy: customer\nunlisted: keep\nfields: []\n"
        'records: {path: "$.data[*]", id: id}\n'
        f"quotas: [{{name: {quota}, per: client_ip, window: 1h, max_requests: 5}}]\n"
    )
    cfg, port, admin = write_config(
        tmp_path,
        up,
        "routes: [{name: c, path: /c, upstream: u, auth: none, policy: customer}]\n"
        "rules: rules\n"
        f"state: {{redis: '{redis_server.url}'}}\n",
    )
    try:
        env = {"GATEWAY_HASH_KEY": uuid.uuid4().hex}
        gw = await start_served(served_procs, tmp_path, cfg, port, admin, env)
        statuses = await fresh_connections(gw.url + "/c", 24)
        assert statuses.count(200) == 5 and statuses.count(429) == 19, statuses
        await until(lambda: gw.counted(24), gw)
        by_pid = gw.requests_by_pid()
        assert len(by_pid) == 2 and all(n > 0 for n in by_pid.values()), by_pid
        assert await gw.metric("gateway_requests_total", route="c", status="429") == 19
        gw.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(gw.proc.wait(), 20) == 0
    finally:
        await runner.cleanup()


async def serve_fails(cfg: Path, tmp_path: Path, within: float) -> bytes:
    """Run `gateway serve` expecting it to fail its start: exit 1, no run directory left;
    returns its stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "-c",
        str(cfg),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    _, err = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode == 1
    assert not run_dirs(tmp_path)
    return err


async def test_a_port_in_use_fails_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg, _, _ = write_config(
            tmp_path,
            "http://127.0.0.1:9",
            "routes: [{name: a, path: /a, upstream: u, auth: none}]\n",
            port=port,
        )
        err = await serve_fails(cfg, tmp_path, 20)
    assert b"cannot listen" in err


async def test_a_worker_that_cannot_start_fails_the_start(tmp_path: Path) -> None:
    # The files exist (config check passes) but are no certificate: each worker fails.
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    cfg, _, _ = write_config(
        tmp_path,
        "http://127.0.0.1:9",
        "routes: [{name: a, path: /a, upstream: u, auth: none}]\n"
        "tls: {cert_file: bad.pem, key_file: bad.pem}\n",
    )
    err = await serve_fails(cfg, tmp_path, 30)
    assert b"exited during start-up" in err


# --- configuration ----------------------------------------------------------------------


def _check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(text, encoding="utf-8")
    code = main(["check", "-c", str(cfg)])
    return code, capsys.readouterr().err


BASE = (
    "upstreams: {u: {url: 'http://127.0.0.1:9000'}}\n"
    "routes: [{name: c, path: /c, upstream: u, auth: none, policy: customer}]\n"
    "rules: rules\n"
)


@pytest.fixture
def quota_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_HASH_KEY", "k" * 32)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "levels.yaml").write_text("levels: [public, secret]\n")
    (rules / "customer.yaml").write_text(
        "policy: customer\nunlisted: keep\nfields: []\n"
        'records: {path: "$.data[*]", id: id}\n'
        "quotas: [{name: bulk, per: subject, window: 1h, max_records: 10}]\n"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "greater than or equal to 1"),
        ("many", "valid integer"),
        ("1000", "less than or equal to 256"),
    ],
)
def test_workers_key_is_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    code, err = _check(
        tmp_path,
        "upstreams: {u: {url: 'http://127.0.0.1:9000'}}\n"
        "routes: [{name: a, path: /a, upstream: u, auth: none}]\n"
        f"workers: {value}\n",
        capsys,
    )
    assert code == 1
    assert f"{tmp_path / 'gateway.yaml'}:3: workers: " in err and message in err


def test_in_process_quotas_with_workers_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], quota_rules: None
) -> None:
    code, err = _check(tmp_path, BASE + "workers: 3\n", capsys)
    assert code == 1
    assert "gateway.yaml:4: workers: 3 workers with in-process quota state" in err
    assert "state.redis" in err and "customer" in err


@pytest.mark.parametrize(
    "extra",
    [
        "workers: 1\n",  # one process: its memory is the whole truth
        "workers: 2\nstate: {redis: 'redis://127.0.0.1:6379/0'}\n",  # shared counts
        "workers: '${GATEWAY_TEST_WORKERS:-2}'\nstate: {redis: 'redis://127.0.0.1:6379/0'}\n",
    ],
)
def test_workers_pass_where_quotas_stay_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], quota_rules: None, extra: str
) -> None:
    code, err = _check(tmp_path, BASE + extra, capsys)
    assert code == 0, err


def test_workers_without_quotas_need_no_shared_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _check(
        tmp_path,
        "upstreams: {u: {url: 'http://127.0.0.1:9000'}}\n"
        "routes: [{name: a, path: /a, upstream: u, auth: none}]\n"
        "workers: 4\n",
        capsys,
    )
    assert code == 0, err
