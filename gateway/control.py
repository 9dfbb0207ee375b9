"""Operating a running gateway: hot reload, readiness, the admin listener.

Reload (SIGHUP or ``POST /admin/reload``) re-reads ``gateway.yaml`` and every
rule file, compiles a whole new runtime and swaps the reference: requests in
flight finish on the runtime they started with, and a file with any error
leaves the old rules serving and answers with every error. Keys that shape
sockets or long-lived clients (listeners, TLS, limits, state, audit) take
effect on restart; a reload that changes them says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import metrics
from gateway.admin import create_admin_app
from gateway.config import load_config, parse_listen
from gateway.errors import ConfigError
from gateway.runtime import Runtime, compile_config

if TYPE_CHECKING:
    from gateway.server import Gateway

log = logging.getLogger("gateway.control")

RESTART_KEYS = (
    "listen",
    "workers",
    "tls",
    "admin_listen",
    "admin_token_env",
    "limits",
    "state",
    "audit",
)
STATE_CHECK_INTERVAL = 2.0


async def reload(gateway: Gateway) -> tuple[int, dict[str, Any]]:
    """Build and swap a new runtime; on any error keep the old one. (status, body)."""
    old = gateway.runtime
    try:
        config = load_config(old.config.source)
        compiled = compile_config(config, previous=old.compiled)
    except ConfigError as exc:
        metrics.rules_reloaded(False, old.version)
        log.error(
            "reload refused, still serving rules %s: %d error(s)", old.version, len(exc.issues)
        )
        for issue in exc.issues:
            log.error("  %s", issue)
        return 422, {"errors": [str(i) for i in exc.issues], "version": old.version}
    gateway.runtime = Runtime(config, gateway.pool, compiled, gateway.state, gateway.audit)
    if old.auth is not None and old.auth is not compiled.auth:
        await old.auth.aclose(keep=compiled.auth)
    metrics.rules_reloaded(True, compiled.version)
    changed = [k for k in RESTART_KEYS if getattr(old.config, k) != getattr(config, k)]
    if changed:
        log.warning("reloaded; these keys take effect on restart: %s", ", ".join(changed))
    log.info("reloaded: rules version %s", compiled.version)
    return 200, {"version": compiled.version, "restart_required": changed}


def readiness(gateway: Gateway) -> tuple[bool, list[str]]:
    """What keeps the gateway from taking traffic (empty: ready)."""
    failing = []
    if gateway.draining:
        failing.append("draining")
    if not gateway.state_up:
        failing.append("state")
    if gateway.audit is not None and not gateway.audit.writable():
        failing.append("audit")
    auth = gateway.runtime.auth
    if auth is not None and not auth.ready():
        failing.append("auth")
    return not failing, failing


async def watch_state(gateway: Gateway) -> None:
    """Keep ``gateway_state_up`` and readiness current (the backend recovers by itself)."""
    from gateway.quota import StateUnavailable

    while True:
        try:
            await gateway.state.ping()
            up = True
        except StateUnavailable:
            up = False
        if up != gateway.state_up:
            log.warning("state backend %s", "reachable again" if up else "unreachable")
        gateway.state_up = up
        metrics.set_state_up(up)
        await asyncio.sleep(STATE_CHECK_INTERVAL)


async def start_admin(
    gateway: Gateway, control: tuple[str, str] | None = None
) -> web.AppRunner | None:
    """The admin app on ``admin_listen``; or, for a worker of ``workers: N``, on the
    supervisor's private control socket ``control = (unix socket path, token)``."""
    cfg = gateway.runtime.config
    if control is None and cfg.admin_listen is None:
        return None
    if control is not None:
        token: str | None = control[1]
    else:
        token = os.environ.get(cfg.admin_token_env) if cfg.admin_token_env else None
    app = create_admin_app(
        token=token,
        metrics_body=metrics.metrics_body,
        ready=lambda: readiness(gateway),
        reload=lambda: reload(gateway),
        audit_broadcast=gateway.broadcaster,
        # The supervisor's relay notices a departed audit-stream client within a second.
        sse_keepalive=1.0 if control is not None else 15.0,
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site: web.BaseSite
    if control is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control[0])  # left by a worker of this slot that died
        site = web.UnixSite(runner, control[0])
        await site.start()
        return runner
    assert cfg.admin_listen is not None
    host, port = parse_listen(cfg.admin_listen)
    site = web.TCPSite(runner, host, port)
    await site.start()
    for sock in getattr(site._server, "sockets", None) or []:
        gateway.admin_addresses.append(sock.getsockname()[:2])
    return runner
