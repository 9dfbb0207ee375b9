"""``gateway demo``: the demo legacy upstream and the gateway in front of it, in one process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from gateway.config import load_config
from gateway.demo.upstream import create_app
from gateway.server import Gateway

log = logging.getLogger("gateway.demo")

DEMO_CONFIG = Path(__file__).with_name("gateway.yaml")


def banner(gateway_url: str, upstream_url: str) -> str:
    lines = [
        "",
        "Clearance Gateway demo",
        f"  legacy customer API (unprotected): {upstream_url}",
        f"  gateway in front of it:            {gateway_url}",
        "",
        "Try:",
        f"  curl -s {gateway_url}/health",
        f"  curl -s '{gateway_url}/api/customers?page=1&size=2'",
        f"  curl -s {gateway_url}/api/customers/1",
        f"  curl -s {gateway_url}/api/ops/branches",
        f"  curl -si {gateway_url}/internal/admin        # not on the allow-list: 404",
        f"  curl -s '{upstream_url}/api/customers?page=1&size=2'   # what the legacy app leaks",
        "",
        "Ctrl-C stops both.",
        "",
    ]
    return "\n".join(lines)


async def run_demo(host: str = "127.0.0.1", port: int = 8080, upstream_port: int = 9000) -> None:
    runner = web.AppRunner(create_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, upstream_port)
    await site.start()
    upstream_url = f"http://{host}:{upstream_port}"
    env = {**os.environ, "DEMO_UPSTREAM_URL": upstream_url, "DEMO_LISTEN": f"{host}:{port}"}
    gateway = Gateway(load_config(DEMO_CONFIG, env=env))
    await gateway.start()
    print(banner(f"http://{host}:{port}", upstream_url), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping demo")
        await gateway.stop()
        await runner.cleanup()
