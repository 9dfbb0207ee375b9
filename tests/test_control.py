"""Hot reload and readiness on a running gateway (admin listener, real sockets)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config import load_config
from gateway.runtime import compile_config
from gateway.server import Gateway
from tests.conftest import UpstreamFactory, free_port

LEVELS = "levels: [public, secret]\n"
POLICY = """\
policy: customer
unlisted: keep
fields:
  - {{name: phone, paths: ["$..phone"], level: secret, action: {action}}}
"""
ADMIN = {"Authorization": "Bearer reload-token"}


async def phone_app(request: web.Request) -> web.Response:
    return web.json_response({"phone": "13812345678"})


def write_rules(d: Path, action: str) -> None:
    d.mkdir(exist_ok=True)
    (d / "levels.yaml").write_text(LEVELS)
    (d / "customer.yaml").write_text(POLICY.format(action=action))


def write_config(path: Path, upstream: str, *, admin_port: int = 0, port: int = 0) -> None:
    path.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"admin_listen: 127.0.0.1:{admin_port}\n"
        "admin_token_env: RELOAD_ADMIN_TOKEN\n"
        f"upstreams: {{app: {{url: '{upstream}'}}}}\n"
        "routes: [{name: c, path: /c, upstream: app, auth: none, policy: customer}]\n"
        "rules: rules\n"
    )


@pytest.fixture
async def running(
    upstream_factory: UpstreamFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    monkeypatch.setenv("GATEWAY_HASH_KEY", "k" * 32)
    monkeypatch.setenv("RELOAD_ADMIN_TOKEN", "reload-token")
    app = web.Application()
    app.router.add_get("/c", phone_app)
    up = await upstream_factory(app)
    write_rules(tmp_path / "rules", "{mask: cn_phone}")
    write_config(tmp_path / "gateway.yaml", up)
    config = load_config(tmp_path / "gateway.yaml")
    gw = Gateway(config, compile_config(config))
    await gw.start()
    (h, p), (ah, ap) = gw.addresses[0], gw.admin_addresses[0]
    yield gw, f"http://{h}:{p}", f"http://{ah}:{ap}", tmp_path
    await gw.stop()


async def test_bad_reload_keeps_serving_good_reload_swaps(running: Any) -> None:
    gw, base, admin, root = running
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/c") as resp:
            assert (await resp.json())["phone"] == "138****5678"
        version = gw.runtime.version
        write_rules(root / "rules", "{mask: cnphone}")
        async with s.post(admin + "/admin/reload", headers=ADMIN) as resp:
            assert resp.status == 422
            body = await resp.json()
            assert body["version"] == version
            assert any("unknown preset 'cnphone'" in e for e in body["errors"])
        async with s.get(base + "/c") as resp:
            assert (await resp.json())["phone"] == "138****5678"  # the old rules still serve
        write_rules(root / "rules", "redact")
        async with s.post(admin + "/admin/reload", headers=ADMIN) as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["version"] != version and body["restart_required"] == []
        async with s.get(base + "/c") as resp:
            assert (await resp.json())["phone"] == "[REDACTED]"
        async with s.get(admin + "/metrics") as resp:
            text = await resp.text()
        assert f'gateway_rules_info{{version="{body["version"]}"}} 1.0' in text
        async with s.post(admin + "/admin/reload") as resp:
            assert resp.status == 401


async def test_readyz_reports_draining(running: Any) -> None:
    gw, _, admin, _ = running
    async with aiohttp.ClientSession() as s:
        async with s.get(admin + "/readyz") as resp:
            assert resp.status == 200
        gw.draining = True
        async with s.get(admin + "/readyz") as resp:
            assert resp.status == 503
            assert "draining" in await resp.text()
        async with s.get(admin + "/healthz") as resp:
            assert resp.status == 200


async def test_sighup_reloads_a_running_process(
    upstream_factory: UpstreamFactory, tmp_path: Path
) -> None:
    app = web.Application()
    app.router.add_get("/c", phone_app)
    up = await upstream_factory(app)
    write_rules(tmp_path / "rules", "{mask: cn_phone}")
    port = free_port()
    write_config(tmp_path / "gateway.yaml", up, port=port, admin_port=free_port())
    env = {**os.environ, "GATEWAY_HASH_KEY": "k" * 32, "RELOAD_ADMIN_TOKEN": "x"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "-c",
        str(tmp_path / "gateway.yaml"),
        env=env,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with s.get(f"http://127.0.0.1:{port}/c") as resp:
                        assert (await resp.json())["phone"] == "138****5678"
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            write_rules(tmp_path / "rules", "redact")
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while True:
                async with s.get(f"http://127.0.0.1:{port}/c") as resp:
                    if (await resp.json())["phone"] == "[REDACTED]":
                        break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        assert await proc.wait() == 0
