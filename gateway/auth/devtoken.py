"""Development tokens for ``gateway token`` and ``gateway demo``.

Rules:

- HS256 only, signed with a local secret (an issuer's ``hmac_secret_env``);
  never with an IdP's key, which the gateway does not hold.
- ``iss``, ``aud``, ``iat`` and ``exp`` are filled in unless the caller gives
  them (``exp`` defaults to ``iat + lifetime``, one hour).
- The secret must be at least 32 bytes (RFC 7518 §3.2), the same rule the
  authenticator applies when it loads the secret.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from typing import Any

import jwt

from gateway.auth.config import AuthConfig, IssuerConfig

MIN_SECRET_BYTES = 32


def generate_dev_secret() -> bytes:
    """A fresh random secret, printable so it can live in an environment variable."""
    # 48 random bytes -> 64 URL-safe characters: long enough for HS256..HS512.
    return secrets.token_urlsafe(48).encode("ascii")


def mint_token(
    claims: Mapping[str, Any],
    secret: bytes,
    *,
    issuer: str,
    audience: str | list[str],
    lifetime: int = 3600,
    now: float | None = None,
) -> str:
    """An HS256 token carrying ``claims`` plus defaults for iss/aud/iat/exp."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the signing secret must be at least {MIN_SECRET_BYTES} bytes")
    if lifetime <= 0:
        raise ValueError("lifetime must be positive")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"iss": issuer, "aud": audience, "iat": issued}
    payload["exp"] = issued + lifetime
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def dev_issuer(config: AuthConfig) -> IssuerConfig | None:
    """The issuer ``gateway token`` signs for: the first with ``hmac_secret_env`` and HS256."""
    for issuer in config.issuers:
        if issuer.hmac_secret_env is not None and "HS256" in issuer.algorithms:
            return issuer
    return None


def mint_for_config(
    config: AuthConfig,
    claims: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    lifetime: int = 3600,
    now: float | None = None,
) -> str:
    """``gateway token -c gateway.yaml``: sign for :func:`dev_issuer`; ValueError if none."""
    issuer = dev_issuer(config)
    if issuer is None or issuer.hmac_secret_env is None:
        raise ValueError("no issuer in auth.issuers has hmac_secret_env with HS256")
    value = (os.environ if env is None else env).get(issuer.hmac_secret_env)
    if not value:
        raise ValueError(f"environment variable {issuer.hmac_secret_env} is not set")
    audience = issuer.audience if isinstance(issuer.audience, str) else issuer.audience[0]
    return mint_token(
        claims,
        value.encode("utf-8"),
        issuer=issuer.issuer,
        audience=audience,
        lifetime=lifetime,
        now=now,
    )
