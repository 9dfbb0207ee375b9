"""Shared fixtures: real upstreams on real sockets, a real gateway, a private redis-server."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config import Config
from gateway.server import Gateway


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_app(app: web.Application, **site_kwargs: Any) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on a free loopback port; returns the runner and its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, **site_kwargs)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "https" if site_kwargs.get("ssl_context") else "http"
    return runner, f"{scheme}://127.0.0.1:{port}"


UpstreamFactory = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def upstream_factory() -> AsyncIterator[UpstreamFactory]:
    runners: list[web.AppRunner] = []

    async def make(app: web.Application, **kwargs: Any) -> str:
        runner, url = await start_app(app, **kwargs)
        runners.append(runner)
        return url

    yield make
    for r in runners:
        await r.cleanup()


def make_config(upstreams: dict[str, Any], routes: list[dict[str, Any]], **extra: Any) -> Config:
    """A config for tests; routes are public (``auth: none``) unless they say otherwise."""
    routes = [{"auth": "none", **r} for r in routes]
    data: dict[str, Any] = {"listen": "127.0.0.1:0", "upstreams": upstreams, "routes": routes}
    data.update(extra)
    return Config.model_validate(data)


GatewayFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def gateway_factory() -> AsyncIterator[GatewayFactory]:
    """Start an in-process gateway from upstreams/routes; returns its base URL."""
    gateways: list[Gateway] = []

    async def make(upstreams: dict[str, Any], routes: list[dict[str, Any]], **extra: Any) -> str:
        gw = Gateway(make_config(upstreams, routes, **extra))
        await gw.start()
        gateways.append(gw)
        host, port = gw.addresses[0]
        scheme = "https" if gw.runtime.config.tls else "http"
        return f"{scheme}://{host}:{port}"

    make.gateways = gateways  # type: ignore[attr-defined]
    yield make
    for gw in gateways:
        await gw.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


# --- redis ------------------------------------------------------------------------


class RedisServer:
    """A private redis-server on a free port (tests of outages stop and restart it)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
