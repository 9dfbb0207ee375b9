"""Bearer token verification: ``Authorization`` values -> :class:`Principal`.

Rules, in the order they are applied:

1. Exactly one ``Authorization`` header (two -> 400 ``multiple_authorization``),
   scheme ``Bearer`` in any casing (another scheme -> ``unsupported_scheme``,
   answered like a missing token per RFC 6750 §3.1), one token after it with
   no inner whitespace (else 400 ``malformed_header``), at most 16 KiB.
2. Verified-token cache: a token verified before (keyed by its SHA-256) is
   answered from an LRU cache without touching a key, but ``exp`` is checked
   again on every hit and the entry is dropped once the key that verified it is
   no longer in the issuer's key set (rotation / revocation).
3. Compact JWS only: three base64url segments; header and payload are JSON
   objects (UTF-8, no duplicate keys, no NaN/Infinity). Anything else ->
   ``malformed_token``. ``crit`` headers and ``b64: false`` are refused (we
   understand no extensions, RFC 7515 §4.1.11).
4. The *unverified* ``iss`` picks the issuer (unknown or missing ->
   ``unknown_issuer``); from then on only that issuer's algorithms and keys
   are used, so one IdP can never vouch for another's tokens.
5. ``alg`` must be in that issuer's allow-list (case-sensitive); ``none`` in
   any casing is refused outright -> ``bad_algorithm``. The key is chosen by
   the gateway, never by the token: ``jku``, ``x5u``, ``x5c`` and ``jwk``
   headers are not read at all, and ``kid`` is only a dictionary key.
6. The signature is checked with PyJWT against keys bound to that exact
   algorithm. HMAC keys exist only for ``hmac_secret_env`` issuers, and an
   asymmetric key is never an HMAC secret (config + key binding + PyJWT's own
   PEM check), which defeats the HS256-with-the-RSA-public-key attack.
7. Claims, with ``leeway`` seconds of clock skew: ``exp`` (required unless the
   issuer says ``require_exp: false``), ``nbf``, ``iat`` not in the future,
   ``aud`` intersecting the configured audience, ``exp - iat <=
   max_lifetime``, ``required_claims`` present and not null. NumericDates must
   be finite numbers.
8. The clearance resolver turns the claims into a :class:`Principal`.

Errors are :class:`AuthError` with a ``reason`` from a fixed set (safe as a
metric label) and a fixed description: nothing from the token is ever echoed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp
from jwt import PyJWS
from jwt.exceptions import InvalidAlgorithmError, InvalidSignatureError, PyJWTError

from gateway.auth.clearance import ClearanceConfigError, ClearanceResolver
from gateway.auth.config import AuthConfig, IssuerConfig
from gateway.auth.jwks import JwksSource
from gateway.auth.keys import (
    KeySource,
    KeySourceError,
    KeysUnavailable,
    StaticKeySource,
    VerificationKey,
    hmac_key_set,
    hmac_secret_from_env,
    load_jwks_file,
    load_public_key_file,
)
from gateway.errors import ConfigError, ConfigIssue
from gateway.types import Principal

log = logging.getLogger(__name__)

AuthReason = Literal[
    "missing_token",
    "unsupported_scheme",
    "malformed_header",
    "multiple_authorization",
    "malformed_token",
    "unknown_issuer",
    "unknown_kid",
    "bad_algorithm",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "bad_audience",
    "lifetime_too_long",
    "missing_claim",
    "jwks_unavailable",
]


@dataclass(frozen=True, slots=True)
class _ReasonInfo:
    status: int
    # RFC 6750 §3.1 error code; None -> a bare "Bearer" challenge (no credentials seen).
    error: str | None
    description: str


# One table: status, challenge and the text a caller may see, per reason.
REASONS: Final[Mapping[str, _ReasonInfo]] = {
    "missing_token": _ReasonInfo(401, None, "A bearer token is required"),
    "unsupported_scheme": _ReasonInfo(401, None, "Only Bearer authorization is accepted"),
    "malformed_header": _ReasonInfo(400, "invalid_request", "Malformed Authorization header"),
    "multiple_authorization": _ReasonInfo(
        400, "invalid_request", "More than one Authorization header"
    ),
    "malformed_token": _ReasonInfo(401, "invalid_token", "The token is malformed"),
    "unknown_issuer": _ReasonInfo(401, "invalid_token", "The token's issuer is not trusted"),
    "unknown_kid": _ReasonInfo(401, "invalid_token", "No trusted key matches the token"),
    "bad_algorithm": _ReasonInfo(401, "invalid_token", "The token's algorithm is not allowed"),
    "bad_signature": _ReasonInfo(401, "invalid_token", "The token's signature is invalid"),
    "expired": _ReasonInfo(401, "invalid_token", "The token has expired"),
    "not_yet_valid": _ReasonInfo(401, "invalid_token", "The token is not valid yet"),
    "issued_in_future": _ReasonInfo(401, "invalid_token", "The token is issued in the future"),
    "bad_audience": _ReasonInfo(401, "invalid_token", "The token is not meant for this service"),
    "lifetime_too_long": _ReasonInfo(
        401, "invalid_token", "The token's lifetime exceeds the allowed maximum"
    ),
    "missing_claim": _ReasonInfo(401, "invalid_token", "The token lacks a required claim"),
    # Our IdP being unreachable says nothing about the caller's token: 503, not 401,
    # so clients do not throw away good tokens and the SOC sees an outage, not an attack.
    "jwks_unavailable": _ReasonInfo(503, None, "Token keys are temporarily unavailable"),
}
AUTH_FAILURE_REASONS: Final[tuple[str, ...]] = tuple(REASONS)


class AuthError(Exception):
    """Authentication failed. ``reason`` is metric-label safe; ``str()`` is the description."""

    def __init__(self, reason: AuthReason, *, retry_after: int | None = None) -> None:
        info = REASONS[reason]
        super().__init__(info.description)
        self.reason: AuthReason = reason
        self.status: int = info.status
        self.description: str = info.description
        self.retry_after = retry_after

    @property
    def www_authenticate(self) -> str | None:
        """The RFC 6750 ``WWW-Authenticate`` value (None for 503, which needs no challenge)."""
        info = REASONS[self.reason]
        if self.status == 503:
            return None
        if info.error is None:
            return "Bearer"
        return f'Bearer error="{info.error}", error_description="{info.description}"'


@dataclass(slots=True)
class AuthStats:
    signature_checks: int = 0
    cache_hits: int = 0
    cache_misses: int = 0


# --- pure parsing ---------------------------------------------------------------------

MAX_TOKEN_LENGTH = 16 * 1024
_SEGMENT_RE = re.compile(rb"^[A-Za-z0-9_-]+$")


def bearer_token(authorization_values: Sequence[str]) -> str:
    """The token from the ``Authorization`` header values; raises :class:`AuthError`."""
    if len(authorization_values) > 1:
        raise AuthError("multiple_authorization")
    if not authorization_values:
        raise AuthError("missing_token")
    parts = authorization_values[0].split(None, 1)
    if not parts:
        raise AuthError("missing_token")
    if parts[0].lower() != "bearer":
        raise AuthError("unsupported_scheme")
    token = parts[1].strip() if len(parts) > 1 else ""
    if not token:
        raise AuthError("missing_token")
    if len(token.split()) != 1:  # any (unicode) whitespace inside; split() runs in C
        raise AuthError("malformed_header")
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise AuthError("malformed_token")
    return token


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate member")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError("non-finite number")


def _json_object(segment: bytes) -> dict[str, Any]:
    if not _SEGMENT_RE.match(segment):
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    value = json.loads(
        raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
    )
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


@dataclass(frozen=True, slots=True)
class UnverifiedToken:
    """A structurally valid compact JWS. Nothing in it is trusted yet."""

    header: dict[str, Any]
    payload: dict[str, Any]


def parse_token(token: str) -> UnverifiedToken:
    """Split and decode; raises ``AuthError("malformed_token")``."""
    if not token.isascii():
        raise AuthError("malformed_token")
    parts = token.encode("ascii").split(b".")
    # An empty signature is let through to be refused as an algorithm problem
    # ("alg": "none" tokens have one), which is the more useful metric label.
    if len(parts) != 3 or (parts[2] and not _SEGMENT_RE.match(parts[2])):
        raise AuthError("malformed_token")
    try:
        header = _json_object(parts[0])
        payload = _json_object(parts[1])
    except (ValueError, binascii.Error, RecursionError):
        raise AuthError("malformed_token") from None
    if "crit" in header or "b64" in header:
        raise AuthError("malformed_token")
    return UnverifiedToken(header, payload)


def _numeric_date(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    try:
        number = float(value) if type(value) in (int, float) else math.nan
    except OverflowError:  # an int beyond any float
        number = math.nan
    if not math.isfinite(number):
        raise AuthError("malformed_token")
    return number


# --- the authenticator ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Issuer:
    config: IssuerConfig
    source: KeySource


@dataclass(slots=True)
class _CacheEntry:
    principal: Principal
    exp: float | None
    # Re-verify after this instant even without exp (bounds trust in a cached token).
    valid_until: float
    issuer: _Issuer
    fingerprint: str


# A token without exp is trusted from the cache for at most this long.
_NO_EXP_CACHE_SECONDS = 300.0


class Authenticator:
    """Verifies bearer tokens for every configured issuer. Build once per config."""

    def __init__(
        self,
        issuers: Sequence[tuple[IssuerConfig, KeySource]],
        resolver: ClearanceResolver,
        *,
        leeway: float = 30,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuers = {cfg.issuer: _Issuer(cfg, source) for cfg, source in issuers}
        self.resolver = resolver
        self.leeway = float(leeway)
        self.stats = AuthStats()
        self._cache: OrderedDict[bytes, _CacheEntry] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock
        self._jws = PyJWS()

    @classmethod
    def from_config(
        cls,
        config: AuthConfig,
        levels: Sequence[str],
        *,
        session: aiohttp.ClientSession | None = None,
        file: str = "gateway.yaml",
        base_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        previous: Authenticator | None = None,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> Authenticator:
        """Load every key source and check roles against ``levels``.

        Reads ``jwks_file``/``public_key_file`` (relative to ``base_dir``) and
        ``hmac_secret_env`` (from ``env``, default ``os.environ``) now; JWKS URLs
        are fetched on first use or by :meth:`prefetch`. ``previous``: the
        authenticator being replaced by a reload; its JWKS caches are kept where
        the issuer's JWKS settings are unchanged, so a reload during an IdP
        outage does not lose the keys. All problems raise one
        :class:`~gateway.errors.ConfigError` naming ``file`` and ``auth.*`` keys.
        """
        env = os.environ if env is None else env
        issues: list[ConfigIssue] = []
        reusable: dict[tuple[Any, ...], JwksSource] = {}
        if previous is not None:
            for old in previous._issuers.values():
                if isinstance(old.source, JwksSource):
                    reusable[old.source.settings] = old.source
        issuers: list[tuple[IssuerConfig, KeySource]] = []
        for i, cfg in enumerate(config.issuers):
            try:
                source = _build_source(cfg, session, base_dir, env, monotonic, reusable)
            except KeySourceError as exc:
                issues.append(ConfigIssue(file, f"auth.issuers[{i}].{exc.key}", str(exc)))
                continue
            issuers.append((cfg, source))
        try:
            resolver = ClearanceResolver.from_config(config.clearance, levels)
        except ClearanceConfigError as exc:
            issues.extend(ConfigIssue(file, f"auth.{k}", m) for k, m in exc.problems)
        if issues:
            raise ConfigError(issues)
        return cls(issuers, resolver, leeway=config.leeway, cache_size=cache_size, clock=clock)

    # --- lifecycle -------------------------------------------------------------------

    def key_sources(self) -> Mapping[str, KeySource]:
        """issuer -> its key source (a :class:`JwksSource` has ``stats`` and ``age()``
        for metrics and readiness)."""
        return {name: i.source for name, i in self._issuers.items()}

    def _jwks_sources(self) -> list[JwksSource]:
        return [i.source for i in self._issuers.values() if isinstance(i.source, JwksSource)]

    async def prefetch(self) -> list[str]:
        """Load every JWKS now; returns the issuers still without keys."""
        sources = [(i.config.issuer, i.source) for i in self._issuers.values()]
        jwks = [(name, s) for name, s in sources if isinstance(s, JwksSource)]
        results = await asyncio.gather(*(s.refresh() for _, s in jwks))
        return [name for (name, _), ok in zip(jwks, results, strict=True) if not ok]

    def ready(self) -> bool:
        """True when every issuer has keys to verify with."""
        return all(s.keys is not None for s in self._jwks_sources())

    async def wait_idle(self) -> None:
        """Wait for background JWKS refreshes (tests; graceful shutdown)."""
        for s in self._jwks_sources():
            await s.wait_idle()

    async def aclose(self, *, keep: Authenticator | None = None) -> None:
        """Stop background fetches; sources handed on to ``keep`` (a reload) stay open."""
        kept = {id(s) for s in keep._jwks_sources()} if keep is not None else set()
        for s in self._jwks_sources():
            if id(s) not in kept:
                await s.aclose()

    # --- per request -----------------------------------------------------------------

    def anonymous(self) -> Principal:
        return self.resolver.anonymous()

    async def authenticate(self, authorization_values: Sequence[str]) -> Principal:
        """The caller behind the ``Authorization`` header values, or :class:`AuthError`."""
        token = bearer_token(authorization_values)
        cache_key = hashlib.sha256(token.encode("ascii")).digest()
        now = self._clock()
        entry = self._cache.get(cache_key)
        if entry is not None:
            if entry.exp is not None and now >= entry.exp + self.leeway:
                del self._cache[cache_key]
                raise AuthError("expired")
            if now < entry.valid_until and entry.issuer.source.is_current(entry.fingerprint):
                self._cache.move_to_end(cache_key)
                self.stats.cache_hits += 1
                return entry.principal
            del self._cache[cache_key]
        self.stats.cache_misses += 1
        principal, entry = await self._verify(token)
        self._cache[cache_key] = entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, _CacheEntry]:
        unverified = parse_token(token)
        header, payload = unverified.header, unverified.payload
        iss = payload.get("iss")
        issuer = self._issuers.get(iss) if type(iss) is str else None
        if issuer is None:
            raise AuthError("unknown_issuer")
        cfg = issuer.config
        alg = header.get("alg")
        if type(alg) is not str:
            raise AuthError("malformed_token")
        if alg.lower() == "none" or alg not in cfg.algorithms:
            raise AuthError("bad_algorithm")
        kid = header.get("kid")
        if kid is not None and type(kid) is not str:
            raise AuthError("malformed_token")
        try:
            found = await issuer.source.lookup(kid, alg)
        except KeysUnavailable:
            retry = int(cfg.jwks_min_refresh_interval)
            raise AuthError("jwks_unavailable", retry_after=retry) from None
        if not found.keys:
            raise AuthError("bad_algorithm" if found.kid_known else "unknown_kid")
        key = self._check_signature(token, alg, found.keys)
        exp = self._check_claims(cfg, payload)
        principal = self.resolver.principal(payload)
        entry = _CacheEntry(
            principal=principal,
            exp=exp,
            valid_until=self._clock() + _NO_EXP_CACHE_SECONDS if exp is None else math.inf,
            issuer=issuer,
            fingerprint=key.fingerprint,
        )
        return principal, entry

    def _check_signature(
        self, token: str, alg: str, keys: Sequence[VerificationKey]
    ) -> VerificationKey:
        for key in keys:
            self.stats.signature_checks += 1
            try:
                # algorithms=[alg] and a PyJWK bound to alg: PyJWT refuses any mismatch too.
                self._jws.decode_complete(token, key=key.jwk, algorithms=[alg])
            except InvalidSignatureError:
                continue
            except InvalidAlgorithmError:
                raise AuthError("bad_algorithm") from None
            except PyJWTError:
                raise AuthError("malformed_token") from None
            return key
        raise AuthError("bad_signature")

    def _check_claims(self, cfg: IssuerConfig, payload: Mapping[str, Any]) -> float | None:
        """Registered-claim checks; returns ``exp`` for the cache."""
        now, leeway = self._clock(), self.leeway
        exp = _numeric_date(payload, "exp")
        nbf = _numeric_date(payload, "nbf")
        iat = _numeric_date(payload, "iat")
        if exp is None and cfg.require_exp:
            raise AuthError("missing_claim")
        if exp is not None and now >= exp + leeway:
            raise AuthError("expired")
        if nbf is not None and now + leeway < nbf:
            raise AuthError("not_yet_valid")
        if iat is not None and iat > now + leeway:
            raise AuthError("issued_in_future")
        aud = payload.get("aud")
        token_aud = [aud] if type(aud) is str else aud if type(aud) is list else []
        if not any(type(a) is str and a in cfg.audiences for a in token_aud):
            raise AuthError("bad_audience")
        if cfg.max_lifetime is not None:
            if exp is None or iat is None:
                raise AuthError("missing_claim")
            if exp - iat > cfg.max_lifetime:
                raise AuthError("lifetime_too_long")
        for name in cfg.required_claims:
            if payload.get(name) is None:
                raise AuthError("missing_claim")
        return exp


def _build_source(
    cfg: IssuerConfig,
    session: aiohttp.ClientSession | None,
    base_dir: Path | None,
    env: Mapping[str, str],
    monotonic: Callable[[], float],
    reusable: Mapping[tuple[Any, ...], JwksSource],
) -> KeySource:
    def resolve(p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() or base_dir is None else base_dir / path

    if cfg.jwks_url is not None:
        source = JwksSource(
            cfg.jwks_url,
            cfg.algorithms,
            cache_ttl=cfg.jwks_cache_ttl,
            min_refresh_interval=cfg.jwks_min_refresh_interval,
            timeout=cfg.jwks_timeout,
            session=session,
            monotonic=monotonic,
        )
        return reusable.get(source.settings, source)
    if cfg.jwks_file is not None:
        return StaticKeySource(load_jwks_file(resolve(cfg.jwks_file), cfg.algorithms))
    if cfg.public_key_file is not None:
        return StaticKeySource(load_public_key_file(resolve(cfg.public_key_file), cfg.algorithms))
    assert cfg.hmac_secret_env is not None  # the config guarantees exactly one source
    secret = hmac_secret_from_env(cfg.hmac_secret_env, env)
    return StaticKeySource(hmac_key_set(secret, cfg.algorithms))
