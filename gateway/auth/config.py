"""The ``auth:`` section of ``gateway.yaml``: shape and load-time rules.

Rules enforced here, at load, so a bad setting never reaches a request:

- ``algorithms`` is a per-issuer allow-list of JWS names (``RS256``, ``ES256``,
  ``HS256`` ...). ``none`` is refused in any casing; unknown names are refused
  (with a did-you-mean for casing slips such as ``rs256``).
- Each issuer has exactly one key source: ``jwks_url``, ``jwks_file``,
  ``public_key_file`` or ``hmac_secret_env``. HMAC algorithms go only with
  ``hmac_secret_env`` and an HMAC secret only with HMAC algorithms, so a public
  key can never end up used as an HMAC secret (RFC 8725 §2.1, §3.1).
- ``jwks_url`` is ``https://``; plain ``http://`` only to a loopback host
  (127.0.0.0/8, ``::1``, ``localhost``), where nothing crosses a network.
- ``audience`` is required: without it a token minted for any other service of
  the same IdP would be accepted here.
- Issuer names are unique: the unverified ``iss`` picks the issuer, so two
  entries with one name would make the choice ambiguous.
- Durations are seconds, or strings such as ``"30s"``, ``"5m"``, ``"8h"``.

Messages name the key and never echo values (a value may be an interpolated
secret); the config loader turns pydantic's ``loc`` into ``auth.issuers[0].x``.
Files and environment variables are read later, when the key sources are built
(:meth:`gateway.auth.verify.Authenticator.from_config`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
KNOWN_ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS

KEY_SOURCES = ("jwks_url", "jwks_file", "public_key_file", "hmac_secret_env")

_DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d|)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _error(message: str) -> PydanticCustomError:
    # A custom error keeps pydantic from prefixing "Value error, " to our text.
    return PydanticCustomError("auth_config", message)


def _seconds(value: Any) -> Any:
    """``30`` or ``"30s"``/``"5m"``/``"8h"``/``"1d"`` -> whole seconds."""
    if isinstance(value, bool):
        raise _error("expected whole seconds, or a duration such as '30s', '5m' or '8h'")
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise _error("expected whole seconds, or a duration such as '30s', '5m' or '8h'")
        return int(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return value


Seconds = Annotated[int, BeforeValidator(_seconds)]


def _algorithm(name: str) -> str:
    if name.lower() == "none":
        raise _error("'none' is never accepted: every token must be signed")
    if name not in KNOWN_ALGORITHMS:
        hint = [k for k in KNOWN_ALGORITHMS if k.lower() == name.lower()]
        suffix = f" (did you mean {hint[0]}?)" if hint else ""
        known = ", ".join(sorted(KNOWN_ALGORITHMS))
        raise _error(f"unknown algorithm{suffix}; known: {known}")
    return name


# Validated per entry, so an error's location names the entry: algorithms[1].
AlgorithmName = Annotated[str, AfterValidator(_algorithm)]


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_jwks_url(url: str) -> str:
    """https, or http to a loopback host; a host is required. Raises ValueError."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - evaluating it validates the port
    except ValueError:
        raise ValueError("jwks_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("jwks_url must be an https:// URL with a host")
    if parts.scheme == "http" and not _is_loopback_host(host):
        raise ValueError(
            "jwks_url must use https:// (plain http:// is allowed only to "
            "127.0.0.0/8, ::1 or localhost)"
        )
    return url


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IssuerConfig(_Model):
    """One trusted token issuer and how to check its tokens."""

    issuer: str = Field(min_length=1)
    audience: str | list[str]
    algorithms: tuple[AlgorithmName, ...]
    # Exactly one key source.
    jwks_url: str | None = None
    jwks_file: str | None = None
    public_key_file: str | None = None
    hmac_secret_env: str | None = None
    require_exp: bool = True
    # exp - iat must not exceed this (a bound on what the IdP may mint).
    max_lifetime: Seconds | None = Field(default=None, gt=0)
    required_claims: tuple[str, ...] = ()
    jwks_cache_ttl: Seconds = Field(default=300, gt=0)
    # An unknown kid triggers a JWKS refetch at most once per this many seconds.
    jwks_min_refresh_interval: Seconds = Field(default=30, gt=0)
    # Whole JWKS fetch, connect to last byte.
    jwks_timeout: float = Field(default=5.0, gt=0, le=60)

    @field_validator("audience")
    @classmethod
    def _audience(cls, v: str | list[str]) -> str | list[str]:
        values = [v] if isinstance(v, str) else v
        if not values or any(not a for a in values):
            raise _error("audience must be a non-empty string or a list of them")
        return v

    @field_validator("algorithms", mode="before")
    @classmethod
    def _algorithms_shape(cls, v: Any) -> Any:
        if isinstance(v, str):
            # A bare string would otherwise validate as a tuple of characters.
            raise _error("algorithms must be a list, e.g. [RS256, ES256]")
        return v

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise _error("algorithms must list at least one algorithm")
        return tuple(dict.fromkeys(v))  # drop repeats, keep order

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                check_jwks_url(v)
            except ValueError as exc:
                raise _error(str(exc)) from None
        return v

    @field_validator("hmac_secret_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME_RE.match(v):
            raise _error("hmac_secret_env names an environment variable, e.g. GATEWAY_JWT_SECRET")
        return v

    @field_validator("required_claims")
    @classmethod
    def _claims(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not c for c in v):
            raise _error("required_claims entries must be non-empty claim names")
        return v

    @model_validator(mode="after")
    def _key_source(self) -> IssuerConfig:
        given = [k for k in KEY_SOURCES if getattr(self, k) is not None]
        if len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            raise _error(f"exactly one of {', '.join(KEY_SOURCES)} is required{got}")
        hmac = [a for a in self.algorithms if a in HMAC_ALGORITHMS]
        if self.hmac_secret_env is not None and len(hmac) != len(self.algorithms):
            raise _error("algorithms: with hmac_secret_env only HS256, HS384 and HS512 are allowed")
        if self.hmac_secret_env is None and hmac:
            raise _error(
                f"algorithms: {', '.join(hmac)} requires hmac_secret_env; a {given[0]} key "
                "must never be used as an HMAC secret"
            )
        return self

    @property
    def audiences(self) -> frozenset[str]:
        return frozenset([self.audience] if isinstance(self.audience, str) else self.audience)

    @property
    def key_source(self) -> str:
        """The name of the configured key source key (``jwks_url`` ...)."""
        return next(k for k in KEY_SOURCES if getattr(self, k) is not None)


class ClearanceConfig(_Model):
    """How verified claims become a clearance level (see :mod:`gateway.auth.clearance`)."""

    # Claim holding a level name (case-sensitive).
    claim: str | None = "clearance"
    # Claim holding roles: a list, or a space-separated string (OAuth "scope" style).
    roles_claim: str | None = "roles"
    # role -> level name; checked against rules/levels.yaml when the authenticator is built.
    roles: dict[str, str] = Field(default_factory=dict)


class AuthConfig(_Model):
    """The ``auth:`` section."""

    leeway: Seconds = Field(default=30, ge=0)
    issuers: list[IssuerConfig] = Field(min_length=1)
    clearance: ClearanceConfig = Field(default_factory=ClearanceConfig)

    @model_validator(mode="after")
    def _unique_issuers(self) -> AuthConfig:
        seen: set[str] = set()
        for i, entry in enumerate(self.issuers):
            if entry.issuer in seen:
                raise _error(
                    f"issuers[{i}].issuer repeats an earlier issuer; the token's iss "
                    "picks the issuer, so each must be unique"
                )
            seen.add(entry.issuer)
        return self
