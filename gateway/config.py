"""``gateway.yaml``: loading, ``${ENV}`` interpolation and validation.

Rules of this module:

- The file is parsed with line tracking (:mod:`gateway.yamlfile`), every string
  value is interpolated (``${VAR}``, ``${VAR:-default}``, ``$${`` for a literal
  ``${``), then validated by pydantic models that forbid unknown keys.
- Every problem becomes a :class:`~gateway.errors.ConfigIssue` naming the file,
  the key path (``routes[2].upstream``) and the line; all problems are reported
  at once. Messages never include values (a value may be an interpolated secret).
- Cross references (a route naming an upstream or level) are checked after the
  shape is valid.
- The result is immutable: a reload builds a new :class:`Config` whole.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.audit.config import AuditConfig
from gateway.auth.config import AuthConfig
from gateway.errors import ConfigError, ConfigIssue, KeyPath, format_key_path
from gateway.routing import RoutePatternError, compile_pattern
from gateway.units import Duration, Size
from gateway.yamlfile import YamlDocument, load_yaml

_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token (method names)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_listen(value: str) -> tuple[str, int]:
    """``0.0.0.0:8080``, ``[::1]:8080``, ``:8080`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 0.0.0.0:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSListen(_Model):
    """TLS on the public listener."""

    cert_file: str
    key_file: str
    min_version: Literal["1.2", "1.3"] = "1.2"


class UpstreamConfig(_Model):
    url: str
    timeout: Duration = 30.0
    connect_timeout: Duration = 5.0
    max_connections: int = Field(default=100, ge=1)
    case_insensitive: bool = False
    # Upstream TLS: verification is on unless explicitly turned off.
    ca_file: str | None = None
    verify: bool = True
    client_cert_file: str | None = None
    client_key_file: str | None = None
    # Static headers for legacy apps with their own login (Basic credentials from ${ENV}).
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        from yarl import URL

        try:
            url = URL(v)
        except ValueError:
            raise ValueError("not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        if url.query_string or url.fragment:
            raise ValueError("must not carry a query string or fragment")
        return v

    @model_validator(mode="after")
    def _client_cert_pair(self) -> UpstreamConfig:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file go together")
        return self


class RecordsConfig(_Model):
    path: str
    id: str


class PageSizeConfig(_Model):
    """Clamp a page-size query parameter so one request cannot pull a whole table."""

    param: str = "size"
    max: int = Field(ge=1)


class RouteConfig(_Model):
    name: str
    path: str
    upstream: str
    methods: list[str] | None = None
    policy: str | None = None
    auth: Literal["jwt", "none"] = "jwt"
    min_level: str | None = None
    allow_networks: list[str] | None = None
    allow_hours: str | None = None
    records: RecordsConfig | None = None
    # Content types (e.g. text/csv) a policy route may pass through unmasked.
    pass_through: list[str] = Field(default_factory=list)
    forward_token: bool = False
    page_size: PageSizeConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("letters, digits, '_', '.', '-' only")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        try:
            compile_pattern(v)
        except RoutePatternError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("must list at least one method (omit the key to allow all)")
        for m in v:
            if not _TOKEN_RE.match(m) or m != m.upper():
                raise ValueError("methods are upper-case HTTP method names")
        return v

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, v: list[str] | None) -> list[str] | None:
        for n in v or []:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError("each entry must be an IP network in CIDR form") from None
        return v


class StateConfig(_Model):
    redis: str | None = None
    on_failure: Literal["closed", "open"] = "closed"
    # One quota decision must answer within this; past it the backend counts as down.
    timeout: Duration = 0.5

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v


class IdentityHeaders(_Model):
    """Headers that tell the upstream who is calling (inbound copies are always stripped)."""

    subject: str = "X-Gateway-Subject"
    clearance: str = "X-Gateway-Clearance"


class LimitsConfig(_Model):
    """Protection against slow or hostile clients and oversized bodies."""

    max_request_body: Size = 10 * 1024**2
    # Policy routes buffer the upstream body to mask it; larger bodies get 502. Where a
    # response streams (below), this caps one record or envelope member instead.
    max_response_body: Size = 32 * 1024**2
    # A policy route whose records are an array under the root (records.path `$.K[*]`
    # or `$[*]`) masks a body larger than this record by record, in bounded memory
    # (gateway/streaming.py). 0: never stream.
    stream_after: Size = 8 * 1024**2
    max_header_size: Size = 8190  # per header line, as aiohttp counts it
    max_headers: int = Field(default=100, ge=1)
    # A request head must be complete this long after its first byte.
    header_timeout: Duration = 10.0
    # An idle keep-alive connection (or one that never sends a byte) is closed after this.
    idle_timeout: Duration = 30.0
    # Longest wait for the next chunk of a request body.
    body_timeout: Duration = 30.0
    max_connections: int = Field(default=10000, ge=1)
    shutdown_timeout: Duration = 30.0
    # workers > 1: a worker that does not answer its supervisor for this long (its event
    # loop is stuck) is killed and restarted, instead of keeping its share of connections.
    worker_hang_timeout: Duration = 30.0


class Config(_Model):
    listen: str = "0.0.0.0:8080"
    # Processes serving `listen` (SO_REUSEPORT, under a supervisor: gateway/workers.py).
    workers: int = Field(default=1, ge=1, le=256)
    tls: TLSListen | None = None
    admin_listen: str | None = None
    admin_token_env: str | None = None
    upstreams: dict[str, UpstreamConfig]
    auth: AuthConfig | None = None
    identity_headers: IdentityHeaders = Field(default_factory=IdentityHeaders)
    routes: list[RouteConfig]
    rules: str | None = None
    state: StateConfig = Field(default_factory=StateConfig)
    audit: AuditConfig = Field(default_factory=lambda: AuditConfig([]))
    # Proxies whose X-Forwarded-For is believed; everyone else is the socket peer.
    trusted_proxies: list[str] = Field(default_factory=list)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    # Header the request id travels in, both ways.
    request_id_header: str = "X-Request-ID"
    # Key for `hash` actions (HMAC-SHA256): stable pseudonyms across restarts and hosts.
    hash_key_env: str = "GATEWAY_HASH_KEY"

    # Set by the loader: where the file was, so relative paths resolve against it.
    source: str = Field(default="", exclude=True)
    _lines: dict[KeyPath, int] = PrivateAttr(default_factory=dict)

    @field_validator("listen", "admin_listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_listen(v)
        return v

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, v: dict[str, UpstreamConfig]) -> dict[str, UpstreamConfig]:
        if not v:
            raise ValueError("at least one upstream is needed")
        return v

    @field_validator("routes")
    @classmethod
    def _routes(cls, v: list[RouteConfig]) -> list[RouteConfig]:
        if not v:
            raise ValueError("at least one route is needed (routes are an allow-list)")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError("each entry must be an IP network in CIDR form") from None
        return v

    def issue(self, path: KeyPath, message: str) -> ConfigIssue:
        """A problem found after loading, located in this file."""
        p = tuple(path)
        while p and p not in self._lines:
            p = p[:-1]
        line = self._lines.get(p) if p else None  # a key absent from the file has no line
        return ConfigIssue(self.source or "gateway.yaml", format_key_path(path), message, line)

    def locate(self, issue: ConfigIssue) -> ConfigIssue:
        """Add the line to an issue another module found in this file by key path."""
        if issue.line is not None or issue.file != (self.source or "gateway.yaml"):
            return issue
        path: list[str | int] = []
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", issue.key):
            path.append(int(part[1:-1]) if part.startswith("[") else part)
        located = self.issue(tuple(path), issue.message)
        return ConfigIssue(issue.file, issue.key, issue.message, located.line)

    def resolve(self, relative: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.source).parent / p


# --- interpolation ----------------------------------------------------------------

_VAR_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(
    data: Any, env: Mapping[str, str], path: KeyPath = ()
) -> tuple[Any, list[tuple[KeyPath, str]]]:
    """Replace ``${VAR}`` in every string value; return the data and the problems."""
    problems: list[tuple[KeyPath, str]] = []

    def sub(value: str, at: KeyPath) -> str:
        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append((at, f"environment variable {name} is not set"))
            return ""

        return _VAR_RE.sub(repl, value)

    def walk(node: Any, at: KeyPath) -> Any:
        if isinstance(node, str):
            return sub(node, at) if "$" in node else node
        if isinstance(node, dict):
            return {k: walk(v, (*at, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*at, i)) for i, v in enumerate(node)]
        return node

    return walk(data, path), problems


# --- loading ------------------------------------------------------------------------

_PYDANTIC_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "frozen_instance": "read-only",
}


def _issues_from_validation(doc: YamlDocument, exc: ValidationError) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_input=False, include_url=False):
        loc: KeyPath = tuple(p for p in err["loc"] if not isinstance(p, str) or "[" not in p)
        # Union branches add their type names to loc ("str", "function-after[...]"): drop them.
        loc = tuple(p for p in loc if p not in ("str", "int", "float", "bool", "dict", "list"))
        msg = _PYDANTIC_MESSAGES.get(err["type"], err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        issues.append(doc.issue(loc, msg))
    return issues


def _cross_check(doc: YamlDocument, cfg: Config) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    names: dict[str, int] = {}
    for i, route in enumerate(cfg.routes):
        if route.name in names:
            issues.append(doc.issue(("routes", i, "name"), f"duplicate route name '{route.name}'"))
        names.setdefault(route.name, i)
        if route.upstream not in cfg.upstreams:
            issues.append(
                doc.issue(("routes", i, "upstream"), f"unknown upstream '{route.upstream}'")
            )
        if route.auth == "jwt" and cfg.auth is None:
            issues.append(
                doc.issue(
                    ("routes", i, "auth"),
                    "route needs a token (the default) but there is no auth section; "
                    "add one, or say auth: none for a public route",
                )
            )
    if cfg.tls is not None:
        for key in ("cert_file", "key_file"):
            if not cfg.resolve(getattr(cfg.tls, key)).is_file():
                issues.append(doc.issue(("tls", key), "file not found"))
    for name, up in cfg.upstreams.items():
        for key in ("ca_file", "client_cert_file", "client_key_file"):
            value = getattr(up, key)
            if value is not None and not cfg.resolve(value).is_file():
                issues.append(doc.issue(("upstreams", name, key), "file not found"))
    for i in cfg.audit.missing_redis_url(cfg.state.redis):
        issues.append(
            doc.issue(("audit", i), "a redis_stream sink needs url: (or a state.redis to share)")
        )
    if cfg.rules is not None and not cfg.resolve(cfg.rules).is_dir():
        issues.append(doc.issue(("rules",), "directory not found"))
    return issues


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate ``gateway.yaml``; raise :class:`ConfigError` with every problem."""
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.issue((), "the file must be a mapping of keys")])
    data, problems = interpolate(doc.data, os.environ if env is None else env)
    if problems:
        raise ConfigError([doc.issue(at, msg) for at, msg in problems])
    try:
        cfg = Config.model_validate({**data, "source": str(Path(path))})
    except ValidationError as exc:
        raise ConfigError(_issues_from_validation(doc, exc)) from None
    cfg._lines = doc.lines
    issues = _cross_check(doc, cfg)
    if issues:
        raise ConfigError(issues)
    return cfg
