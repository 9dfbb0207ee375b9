"""``gateway demo``: the demo legacy upstream and the gateway in front of it, in one process.

The demo generates a development signing key at every start and prints one
token per clearance level, so what each caller may see can be compared side
by side with curl.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.auth.devtoken import generate_dev_secret, mint_for_config
from gateway.config import Config, load_config
from gateway.demo.upstream import create_app
from gateway.runtime import Compiled, compile_config
from gateway.server import Gateway

log = logging.getLogger("gateway.demo")

DEMO_CONFIG = Path(__file__).with_name("gateway.yaml")
# Pseudonyms only need to be stable for the demo's lifetime; never reuse this key.
DEMO_HASH_KEY = "clearance-gateway-demo-only-hash-key"


def find_rules() -> Path:
    """The shipped rule pack: $GATEWAY_DEMO_RULES, ./rules, or the source tree's rules/."""
    if env := os.environ.get("GATEWAY_DEMO_RULES"):
        return Path(env).resolve()
    for candidate in (Path("rules"), Path(__file__).resolve().parents[2] / "rules"):
        if (candidate / "levels.yaml").is_file():
            return candidate.resolve()
    return Path("rules").resolve()


def demo_env(host: str, port: int, upstream_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GATEWAY_DEMO_SECRET", generate_dev_secret().decode("ascii"))
    env.setdefault("GATEWAY_DEMO_HASH_KEY", DEMO_HASH_KEY)
    env["GATEWAY_DEMO_RULES"] = str(find_rules())
    env["DEMO_UPSTREAM_URL"] = upstream_url
    env["DEMO_LISTEN"] = f"{host}:{port}"
    return env


def demo_tokens(
    config: Config, compiled: Compiled, env: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    """(variable, who, token) for each level, plus a risk officer with need-to-know."""
    assert config.auth is not None
    out = []
    for level in compiled.levels:
        claims = {"sub": f"demo-{level}", "clearance": level}
        out.append((f"T_{level.upper()}", f"clearance {level}", claims))
    out.append(
        (
            "T_RISK",
            "clearance secret + department risk (need-to-know)",
            {"sub": "demo-risk-officer", "clearance": compiled.levels[-1], "department": "risk"},
        )
    )
    return [
        (var, who, mint_for_config(config.auth, claims, env=env, lifetime=8 * 3600))
        for var, who, claims in out
    ]


def banner(
    gateway_url: str, upstream_url: str, tokens: list[tuple[str, str, str]], secret: str
) -> str:
    lines = [
        "",
        "Clearance Gateway demo",
        f"  legacy customer API (unprotected): {upstream_url}",
        f"  gateway in front of it:            {gateway_url}",
        "",
        "Tokens (valid 8 h, signed with this run's development key):",
    ]
    lines += [f"  export {var}='{tok}'   # {who}" for var, who, tok in tokens]
    lines += [
        "",
        "Try:",
        f"  curl -s {gateway_url}/health",
        f"  curl -s {gateway_url}/api/customers/1                               # no token: 401",
    ]
    for var, who, _ in tokens:
        lines.append(
            f'  curl -s -H "Authorization: Bearer ${var}" {gateway_url}/api/customers/1   # {who}'
        )
    first = tokens[0][0]
    lines += [
        f'  curl -s -H "Authorization: Bearer ${first}" '
        f"'{gateway_url}/api/customers?page=1&size=2'",
        f'  curl -si -H "Authorization: Bearer ${first}" {gateway_url}/api/ops/branches'
        "   # below internal: 403",
        f"  curl -si {gateway_url}/internal/admin                # not on the allow-list: 404",
        "  # Bulk-read protection: 100 distinct customers per hour, pages clamped to 50:",
        "  for p in 1 2 3; do curl -s -o /dev/null -w '%{http_code} ' "
        f'-H "Authorization: Bearer ${first}" '
        f"'{gateway_url}/api/customers?page=$p&size=500'; done; echo   # 200 200 429",
        f"  curl -s {upstream_url}/api/customers/1             # what the legacy app leaks",
        "",
        "More tokens, from another shell (the development key of this run):",
        f"  export GATEWAY_DEMO_SECRET='{secret}'",
        '  gateway token --claims \'{"sub": "me", "clearance": "internal"}\'',
        "",
        "Ctrl-C stops both.",
        "",
    ]
    return "\n".join(lines)


@dataclass
class Demo:
    """A running demo: the legacy upstream, the gateway and the tokens it printed."""

    gateway: Gateway
    upstream: web.AppRunner
    gateway_url: str
    upstream_url: str
    tokens: list[tuple[str, str, str]]
    secret: str

    async def stop(self) -> None:
        await self.gateway.stop()
        await self.upstream.cleanup()


async def start_demo(host: str = "127.0.0.1", port: int = 8080, upstream_port: int = 9000) -> Demo:
    upstream_url = f"http://{host}:{upstream_port}"
    env = demo_env(host, port, upstream_url)
    config = load_config(DEMO_CONFIG, env=env)
    compiled = compile_config(config, env=env)
    runner = web.AppRunner(create_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, upstream_port).start()
    gateway = Gateway(config, compiled)
    await gateway.start()
    gw_host, gw_port = gateway.addresses[0]
    return Demo(
        gateway,
        runner,
        f"http://{gw_host}:{gw_port}",
        upstream_url,
        demo_tokens(config, compiled, env),
        env["GATEWAY_DEMO_SECRET"],
    )


async def run_demo(host: str = "127.0.0.1", port: int = 8080, upstream_port: int = 9000) -> None:
    demo = await start_demo(host, port, upstream_port)
    print(banner(demo.gateway_url, demo.upstream_url, demo.tokens, demo.secret), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping demo")
        await demo.stop()
