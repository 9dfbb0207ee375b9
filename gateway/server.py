"""The gateway process: listener, stage chain, runtime swap, graceful shutdown.

The stage order is the one visible list below. A request is handled by
building an :class:`~gateway.exchange.Exchange` pinned to the current runtime
and passing it down the chain folded once at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from aiohttp import web

from gateway import metrics
from gateway.audit.broadcast import AuditBroadcaster
from gateway.audit.writer import AuditWriter
from gateway.auth.conditions import allowed, client_ip
from gateway.config import Config, parse_listen
from gateway.connections import ConnectionLimiter, GatewayServer
from gateway.control import reload, start_admin, watch_state
from gateway.exchange import Exchange, Stage, fold
from gateway.limiting import limit
from gateway.proxy import forward
from gateway.quota import open_backend
from gateway.runtime import Compiled, Runtime, UpstreamPool, compile_config
from gateway.stages import (
    audit_gate,
    authenticate,
    conditions,
    guard,
    observe,
    request_id_from,
    route,
)
from gateway.trail import leave_trace

log = logging.getLogger("gateway")

# observe → guard → audit gate → route → authenticate → conditions → limit → forward
# (forward relays, or for policy routes filters the body and accounts quotas).
# observe is outermost so the trace records the answer guard turned an error into.
STAGES: Final[list[Stage]] = [observe, guard, audit_gate, route, authenticate, conditions, limit]


def listener_ssl_context(config: Config) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if config.tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.load_cert_chain(config.resolve(config.tls.cert_file), config.resolve(config.tls.key_file))
    return ctx


class Gateway:
    """One gateway instance: holds the current runtime and the listeners."""

    def __init__(self, config: Config, compiled: Compiled | None = None) -> None:
        compiled = compiled or compile_config(config)
        self.pool = UpstreamPool()
        # Quota state outlives rule reloads; ids are stored as digests keyed like hashes.
        self.state = open_backend(
            config.state.redis, timeout=config.state.timeout, id_key=compiled.hash_key
        )
        self.state_up = True
        self.broadcaster = AuditBroadcaster()
        self.audit = AuditWriter.from_config(
            config.audit,
            state_redis_url=config.state.redis,
            base_dir=Path(config.source).parent,
            broadcaster=self.broadcaster,
        )
        self.runtime = Runtime(config, self.pool, compiled, self.state, self.audit)
        self.chain = fold(STAGES, forward)
        self.limiter = ConnectionLimiter(config.limits.max_connections)
        self.draining = False
        self._runner: web.ServerRunner | None = None
        self._admin: web.AppRunner | None = None
        self._watch: asyncio.Task[None] | None = None
        self._fold: asyncio.Task[None] | None = None
        self._prefetch: asyncio.Task[list[str]] | None = None
        self.addresses: list[tuple[str, int]] = []
        self.admin_addresses: list[tuple[str, int]] = []

    def _exchange(self, request: web.BaseRequest) -> Exchange:
        runtime = self.runtime
        peer_info = request.transport.get_extra_info("peername") if request.transport else None
        peer = peer_info[0] if peer_info else ""
        trusted = runtime.compiled.trusted_proxies
        # X-Forwarded-For counts only when the socket peer is one of our own proxies.
        via_proxy = bool(trusted) and allowed(peer, trusted)
        xff = (
            (", ".join(request.headers.getall("X-Forwarded-For", [])) or None)
            if via_proxy
            else None
        )
        return Exchange(
            request=request,
            runtime=runtime,
            request_id=request_id_from(request.headers.get(runtime.config.request_id_header)),
            started=time.perf_counter(),
            wall_start=time.time(),
            client_ip=client_ip(peer, xff, trusted) if via_proxy else peer,
            peer=peer,
            forwarded_for=xff,
        )

    def _protocol_error(self, request: web.BaseRequest, status: int, reason: str) -> str:
        """A request the HTTP parser refused still leaves its trace; returns its id."""
        ex = self._exchange(request)
        ex.deny("deny_route", reason)
        leave_trace(ex, status, self.audit)
        return ex.request_id

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self.chain(self._exchange(request))

    async def start(
        self,
        *,
        sockets: Sequence[socket.socket] | None = None,
        control: tuple[str, str] | None = None,
    ) -> None:
        """Start serving ``listen`` — or, in a worker of ``workers: N``, the listening
        ``sockets`` the supervisor bound, with the admin app on its ``control`` socket
        (path, token) instead of ``admin_listen`` (see :mod:`gateway.workers`)."""
        cfg = self.runtime.config
        await self.audit.start()
        metrics.set_rules_version(self.runtime.version)
        self._watch = asyncio.create_task(watch_state(self))
        if metrics.MULTIPROC:
            self._fold = asyncio.create_task(metrics.fold_fields_every())
        if self.runtime.auth is not None:
            # In the background: /readyz says "auth" until every JWKS has keys.
            self._prefetch = asyncio.create_task(self.runtime.auth.prefetch())
        self._admin = await start_admin(self, control)
        limits = cfg.limits
        server = GatewayServer(
            self.handle,
            limiter=self.limiter,
            header_timeout=limits.header_timeout,
            request_id_header=cfg.request_id_header,
            on_protocol_error=self._protocol_error,
            # Cancel the handler (and so the upstream request) when the caller goes away.
            handler_cancellation=True,
            keepalive_timeout=limits.idle_timeout,
            max_line_size=limits.max_header_size,
            max_field_size=limits.max_header_size,
            max_headers=limits.max_headers,
            access_log=None,
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=limits.shutdown_timeout)
        await self._runner.setup()
        ssl_context = listener_ssl_context(cfg)
        sites: list[web.BaseSite]
        if sockets is None:
            host, port = parse_listen(cfg.listen)
            sites = [web.TCPSite(self._runner, host, port, ssl_context=ssl_context, backlog=1024)]
        else:
            sites = [
                web.SockSite(self._runner, s, ssl_context=ssl_context, backlog=1024)
                for s in sockets
            ]
        for site in sites:
            await site.start()
            for sock in getattr(site._server, "sockets", None) or []:  # bound port when 0
                self.addresses.append(sock.getsockname()[:2])

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then close."""
        self.draining = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        for task in (self._watch, self._prefetch, self._fold):
            if task is not None:
                task.cancel()
        metrics.fold_fields()  # the drained requests' field counts, before the process ends
        await self.audit.aclose()
        await self.pool.close()
        await self.state.close()
        if self.runtime.auth is not None:
            await self.runtime.auth.aclose()


async def serve(
    config: Config, compiled: Compiled | None = None, *, ready: asyncio.Event | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    gateway = Gateway(config, compiled)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload(gateway)))
    for host, port in gateway.addresses:
        log.info("listening on %s:%s", host, port)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down: draining in-flight requests")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await gateway.stop()
