"""What a loaded configuration becomes at run time: rules, identity, compiled routes.

:func:`compile_config` turns a validated :class:`~gateway.config.Config` into
everything the request path needs (the rule set, the authenticator, each
route's policy, level, networks and hours) and reports every problem at once,
located in its file. It does no network I/O and needs no event loop, so
``gateway check`` runs exactly the validation that ``gateway serve`` does.

A :class:`Runtime` binds the compiled parts to pooled upstream client
sessions. It is built whole and never patched; the server holds one reference
and swaps it on reload. The :class:`UpstreamPool` outlives runtimes, so a reload
keeps warm connections to upstreams whose settings did not change.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from yarl import URL

from gateway.audit.writer import AuditWriter
from gateway.auth.conditions import HoursWindow, Network, parse_hours, parse_networks
from gateway.auth.verify import Authenticator
from gateway.config import Config, RouteConfig, UpstreamConfig
from gateway.errors import ConfigError, ConfigIssue
from gateway.jsoncodec import decode, encode
from gateway.quota import QuotaBackend
from gateway.quota.engine import counts_requests, counts_responses
from gateway.routing import Router
from gateway.rules import RecordSpec, RuleSet, compile_records, load_rules
from gateway.rules.model import Quota
from gateway.types import Principal
from gateway.upstream import UpstreamClient

if TYPE_CHECKING:
    from gateway.exchange import Exchange

# Without a rule pack there is one level: everyone is the same (lowest) caller.
DEFAULT_LEVELS = ("public",)


@dataclass(frozen=True, slots=True)
class RouteRules:
    """The per-route conditions, compiled once."""

    min_level: int | None
    networks: tuple[Network, ...] | None
    hours: HoursWindow | None
    records: RecordSpec | None
    # The policy's quotas, and whether any counts requests (the store is asked before
    # the upstream) or records and customers (asked on account): gateway.limiting reads
    # them on every request.
    quotas: tuple[Quota, ...] = ()
    counts_requests: bool = False
    counts_responses: bool = False


@dataclass(frozen=True, slots=True)
class Compiled:
    hash_key: bytes
    rules: RuleSet | None
    auth: Authenticator | None
    levels: tuple[str, ...]
    routes: tuple[RouteRules, ...]
    trusted_proxies: tuple[Network, ...]

    @property
    def version(self) -> str:
        return self.rules.version if self.rules is not None else "none"


def compile_config(
    config: Config, env: Mapping[str, str] | None = None, previous: Compiled | None = None
) -> Compiled:
    """Load rules and keys, compile routes; raise :class:`ConfigError` with every problem."""
    env = os.environ if env is None else env
    issues: list[ConfigIssue] = []
    rules: RuleSet | None = None
    if config.rules is not None:
        key = env.get(config.hash_key_env, "")
        if not key:
            issues.append(
                config.issue(
                    ("hash_key_env",),
                    f"environment variable {config.hash_key_env} is not set "
                    "(the key for hash actions; keep it stable across restarts)",
                )
            )
        try:
            # With the key missing (already reported) a placeholder still lets every
            # other problem in the rules be found in the same run.
            hash_key = key.encode("utf-8") or b"missing-hash-key-placeholder"
            rules = load_rules(config.resolve(config.rules), hash_key=hash_key)
        except ConfigError as exc:
            issues.extend(exc.issues)
    rules_failed = config.rules is not None and rules is None
    levels = rules.levels if rules is not None else DEFAULT_LEVELS

    auth: Authenticator | None = None
    if config.auth is not None and not rules_failed:  # levels unknown: would only add noise
        try:
            auth = Authenticator.from_config(
                config.auth,
                levels,
                file=config.source or "gateway.yaml",
                base_dir=Path(config.source).parent,
                env=env,
                previous=previous.auth if previous is not None else None,
            )
        except ConfigError as exc:
            issues.extend(config.locate(i) for i in exc.issues)

    route_issues: list[ConfigIssue] = []
    routes = tuple(
        _compile_route(config, i, r, rules, levels, route_issues)
        for i, r in enumerate(config.routes)
    )
    if not rules_failed:  # unknown policies and levels are meaningless without the rules
        issues.extend(route_issues)
    issues.extend(_unshared_quotas(config, rules))
    if issues:
        raise ConfigError(issues)
    return Compiled(
        env.get(config.hash_key_env, "").encode("utf-8"),
        rules,
        auth,
        tuple(levels),
        routes,
        parse_networks(config.trusted_proxies),
    )


def _unshared_quotas(config: Config, rules: RuleSet | None) -> list[ConfigIssue]:
    """Refuse ``workers: N`` with in-process quota state when a served policy has quotas.

    Each worker would keep its own counts, so a caller spread over N connections
    could read up to N times every ``max_*``: a silently weakened control, not a
    degraded one. Shared, atomic counts need ``state.redis``.
    """
    if config.workers == 1 or config.state.redis is not None or rules is None:
        return []
    served = {r.policy for r in config.routes if r.policy is not None}
    limited = sorted(p for p in served if p in rules.policies and rules.policies[p].quotas)
    if not limited:
        return []
    n = config.workers
    return [
        config.issue(
            ("workers",),
            f"{n} workers with in-process quota state would each count on their own "
            f"(a caller could read up to {n}x every max_* of policy {', '.join(limited)}); "
            "set state.redis to share the counts, or use workers: 1",
        )
    ]


def _compile_route(
    config: Config,
    i: int,
    route: RouteConfig,
    rules: RuleSet | None,
    levels: tuple[str, ...],
    issues: list[ConfigIssue],
) -> RouteRules:
    at = ("routes", i)
    if route.policy is not None:
        if rules is None:
            issues.append(config.issue((*at, "policy"), "no rules directory is configured"))
        elif route.policy not in rules.policies:
            known = ", ".join(sorted(rules.policies)) or "none"
            issues.append(
                config.issue((*at, "policy"), f"unknown policy '{route.policy}' (known: {known})")
            )
    min_level = None
    if route.min_level is not None:
        if route.min_level in levels:
            min_level = levels.index(route.min_level)
        else:
            issues.append(
                config.issue(
                    (*at, "min_level"),
                    f"unknown level '{route.min_level}'; levels are {', '.join(levels)}",
                )
            )
    hours = None
    if route.allow_hours is not None:
        try:
            hours = parse_hours(route.allow_hours)
        except ValueError as exc:
            issues.append(config.issue((*at, "allow_hours"), str(exc)))
    records = None
    if route.records is not None:
        try:
            records = compile_records(route.records.path, route.records.id)
        except ValueError as exc:
            issues.append(config.issue((*at, "records", "path"), str(exc)))
    networks = parse_networks(route.allow_networks) if route.allow_networks is not None else None
    quotas: tuple[Quota, ...] = ()
    if route.policy is not None and rules is not None and route.policy in rules.policies:
        quotas = rules.policies[route.policy].quotas
    return RouteRules(
        min_level,
        networks,
        hours,
        records,
        quotas,
        counts_requests(quotas),
        counts_responses(quotas),
    )


# --- upstream clients -----------------------------------------------------------------


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
    """One pooled client per upstream, reused across reloads when unchanged."""

    def __init__(self) -> None:
        self._clients: dict[str, tuple[UpstreamConfig, UpstreamClient]] = {}
        # Clients replaced by a reload: requests in flight may still use them.
        self._retired: list[UpstreamClient] = []

    def client_for(self, name: str, cfg: UpstreamConfig, config: Config) -> UpstreamClient:
        known = self._clients.get(name)
        if known is not None and known[0] == cfg and not known[1].closed:
            return known[1]
        url = URL(cfg.url)
        host = url.raw_host or ""
        client = UpstreamClient(
            host,
            url.port or (443 if url.scheme == "https" else 80),
            host_header=(f"[{host}]" if ":" in host else host)
            + (f":{url.explicit_port}" if url.explicit_port is not None else ""),
            ssl_context=upstream_ssl_context(cfg, config) if url.scheme == "https" else None,
            max_connections=cfg.max_connections,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.timeout,
        )
        if known is not None:
            self._retired.append(known[1])
        self._clients[name] = (cfg, client)
        return client

    async def close(self) -> None:
        for _, client in self._clients.values():
            await client.close()
        for client in self._retired:
            await client.close()
        self._clients.clear()
        self._retired.clear()


# --- the runtime ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamRuntime:
    name: str
    config: UpstreamConfig
    url: URL
    base_path: str  # the URL's path without a trailing slash ("" for none)
    client: UpstreamClient


@dataclass(frozen=True, slots=True)
class RouteRuntime:
    name: str
    config: RouteConfig
    upstream: UpstreamRuntime
    rules: RouteRules
    # config.policy, read on every request by several stages: a slot, not a property.
    policy: str | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", self.config.policy)


class Runtime:
    """Compiled routes, rules and identity for one configuration (immutable once built)."""

    def __init__(
        self,
        config: Config,
        pool: UpstreamPool,
        compiled: Compiled,
        state: QuotaBackend,
        audit: AuditWriter | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.audit = audit
        self.compiled = compiled
        self.rules = compiled.rules
        self.auth = compiled.auth
        self.version = compiled.version
        self.anonymous = (
            compiled.auth.anonymous()
            if compiled.auth is not None
            else Principal(None, 0, compiled.levels[0])
        )
        upstreams = {
            name: UpstreamRuntime(
                name=name,
                config=cfg,
                url=URL(cfg.url),
                base_path=URL(cfg.url).raw_path.rstrip("/"),
                client=pool.client_for(name, cfg, config),
            )
            for name, cfg in config.upstreams.items()
        }
        self.routes = tuple(
            RouteRuntime(r.name, r, upstreams[r.upstream], rr)
            for r, rr in zip(config.routes, compiled.routes, strict=True)
        )
        self.router: Router[RouteRuntime] = Router(
            Router.route(
                r.config.path,
                r.config.methods,
                r,
                case_insensitive=r.upstream.config.case_insensitive,
            )
            for r in self.routes
        )

    def mask_body(self, ex: Exchange, body: bytes) -> bytes | None:
        """The route's policy applied for the caller to a JSON body; None when no
        rule set is loaded. Raises ``JsonError`` for a body that is not acceptable JSON.

        The native pass answers when it can; otherwise (or when it declines) the
        reference decodes, masks and encodes. Both give the same bytes and counts.
        """
        assert ex.route is not None and ex.route.policy is not None
        if self.rules is None:
            return None
        plan = self.rules.plan(ex.route.policy, ex.principal)
        records = ex.route.rules.records
        fast = plan.mask_bytes(body, records=records)
        if fast is not None:
            out, result = fast
        else:
            result = plan.apply(decode(body), records=records)
            out = encode(result.document)
        ex.records = result.records.count
        ex.entities = list(result.records.ids)
        ex.fields = result.fields
        return out
