"""What a loaded configuration becomes at run time: compiled routes and upstream clients.

A :class:`Runtime` is built whole from a :class:`~gateway.config.Config` and
never patched; the server holds one reference and swaps it on reload.
Upstream client sessions (keep-alive pools) are owned by an
:class:`UpstreamPool` that outlives runtimes, so a reload does not drop warm
connections to upstreams whose settings did not change.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp
from yarl import URL

from gateway.config import Config, RouteConfig, UpstreamConfig
from gateway.routing import Router


@dataclass(frozen=True, slots=True)
class UpstreamRuntime:
    name: str
    config: UpstreamConfig
    url: URL
    base_path: str  # the URL's path without a trailing slash ("" for none)
    session: aiohttp.ClientSession


@dataclass(frozen=True, slots=True)
class RouteRuntime:
    name: str
    config: RouteConfig
    upstream: UpstreamRuntime

    @property
    def policy(self) -> str | None:
        return self.config.policy


def upstream_ssl_context(cfg: UpstreamConfig, config: Config) -> ssl.SSLContext:
    """Verification on by default; ``ca_file`` for private CAs; optional client cert."""
    cafile = str(config.resolve(cfg.ca_file)) if cfg.ca_file else None
    ctx = ssl.create_default_context(cafile=cafile)
    if not cfg.verify:
        # An explicit, visible opt-out for test rigs; never the default.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.client_cert_file and cfg.client_key_file:
        ctx.load_cert_chain(
            config.resolve(cfg.client_cert_file), config.resolve(cfg.client_key_file)
        )
    return ctx


class UpstreamPool:
    """One pooled client session per upstream, reused across reloads when unchanged."""

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[UpstreamConfig, aiohttp.ClientSession]] = {}
        # Sessions replaced by a reload: requests in flight may still use them.
        self._retired: list[aiohttp.ClientSession] = []

    def session_for(self, name: str, cfg: UpstreamConfig, config: Config) -> aiohttp.ClientSession:
        known = self._sessions.get(name)
        if known is not None and known[0] == cfg and not known[1].closed:
            return known[1]
        url = URL(cfg.url)
        connector = aiohttp.TCPConnector(
            limit=cfg.max_connections,
            ssl=upstream_ssl_context(cfg, config) if url.scheme == "https" else False,
            enable_cleanup_closed=False,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            # The gateway decodes bodies itself, with size caps, where a policy needs it;
            # pass-through routes forward the upstream's bytes untouched.
            auto_decompress=False,
            # Never invent headers the caller did not send (Accept-Encoding above all:
            # a caller that asked for no compression must not receive gzip).
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.timeout
            ),
            cookie_jar=aiohttp.DummyCookieJar(),  # a proxy must not keep one caller's cookies
            requote_redirect_url=False,
        )
        if known is not None:
            self._retired.append(known[1])
        self._sessions[name] = (cfg, session)
        return session

    async def close(self) -> None:
        for _, session in self._sessions.values():
            await session.close()
        for session in self._retired:
            await session.close()
        self._sessions.clear()
        self._retired.clear()


class Runtime:
    """Compiled routes for one configuration (immutable once built)."""

    def __init__(self, config: Config, pool: UpstreamPool) -> None:
        self.config = config
        upstreams = {
            name: UpstreamRuntime(
                name=name,
                config=cfg,
                url=URL(cfg.url),
                base_path=URL(cfg.url).raw_path.rstrip("/"),
                session=pool.session_for(name, cfg, config),
            )
            for name, cfg in config.upstreams.items()
        }
        self.routes = tuple(RouteRuntime(r.name, r, upstreams[r.upstream]) for r in config.routes)
        self.router: Router[RouteRuntime] = Router(
            Router.route(
                r.config.path,
                r.config.methods,
                r,
                case_insensitive=r.upstream.config.case_insensitive,
            )
            for r in self.routes
        )
