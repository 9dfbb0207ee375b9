"""Fixtures for the identity tests: real keys, a real JWKS server, a fake clock.

Keys are generated with ``cryptography`` once per session (RSA generation is
the slow part). JWKS servers are aiohttp apps on real sockets
(``aiohttp_server``) that count the requests they receive, so tests can assert
how often the gateway talks to the IdP.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

from gateway.auth.config import AuthConfig
from gateway.auth.verify import REASONS, Authenticator, AuthError

LEVELS = ["public", "internal", "confidential", "secret"]
ISSUER = "https://idp.example.com/"
AUDIENCE = "customer-gateway"
T0 = 1_700_000_000.0
# An HMAC secret for HS256 issuers in tests.
SECRET = b"s" * 20 + b"0123456789abcdefghijklmnopqrstuv"
Claims = Callable[..., dict[str, Any]]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS with any header, any payload and any signature bytes."""
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(payload).encode())
    return f"{h}.{p}.{b64url(signature)}"


@dataclass
class KeyPair:
    private: Any
    alg: str

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def jwk(self, kid: str | None, *, alg: str | None = "default", **extra: Any) -> dict[str, Any]:
        algo = RSAAlgorithm if isinstance(self.private, rsa.RSAPrivateKey) else ECAlgorithm
        out: dict[str, Any] = algo.to_jwk(self.public, as_dict=True)
        if kid is not None:
            out["kid"] = kid
        if alg == "default":
            out["alg"] = self.alg
        elif alg is not None:
            out["alg"] = alg
        out["use"] = "sig"
        out.update(extra)
        return out

    def public_pem(self) -> bytes:
        pem: bytes = self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem

    def sign_raw(self, header: dict[str, Any], payload: dict[str, Any]) -> str:
        """Sign any header as given (PyJWT's encoder would refuse odd ones)."""
        signing_input = forge(header, payload).rsplit(".", 1)[0]
        algorithm = get_default_algorithms()[header.get("alg", self.alg)]
        return signing_input + "." + b64url(algorithm.sign(signing_input.encode(), self.private))

    def sign(
        self,
        claims: dict[str, Any],
        *,
        kid: str | None = None,
        alg: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        h: dict[str, Any] = {"alg": alg or self.alg, "typ": "JWT", **(headers or {})}
        if kid is not None:
            h["kid"] = kid
        return self.sign_raw(h, claims)


@pytest.fixture(scope="session")
def rsa_key() -> KeyPair:
    return KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


@pytest.fixture(scope="session")
def rsa_key2() -> KeyPair:
    return KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


@pytest.fixture(scope="session")
def attacker_key() -> KeyPair:
    return KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


@pytest.fixture(scope="session")
def ec_key() -> KeyPair:
    return KeyPair(ec.generate_private_key(ec.SECP256R1()), "ES256")


@dataclass
class FakeClock:
    """Wall clock (claims) and monotonic clock (JWKS cache) that move together."""

    wall: float = T0
    mono: float = 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def claims(clock: FakeClock) -> Callable[..., dict[str, Any]]:
    """Valid claims at the fake clock's now; keyword arguments override or add."""

    def make(**overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": int(clock.wall),
            "exp": int(clock.wall) + 600,
            "clearance": "confidential",
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not _DROP}

    return make


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


_DROP: Any = _Drop()


@pytest.fixture
def drop() -> Any:
    """Pass as a claim value to leave the claim out."""
    return _DROP


@dataclass
class JwksServer:
    """A JWKS endpoint whose behaviour the test controls; counts its requests."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "ok"  # ok | down | garbage | not_jwks | slow | huge | huge_chunked | redirect
    fetches: int = 0
    url: str = ""
    base: str = ""
    redirected: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        if self.mode == "down":
            return web.Response(status=503, text="down")
        if self.mode == "garbage":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if self.mode == "not_jwks":
            return web.json_response({"hello": "world"})
        if self.mode == "slow":
            await asyncio.sleep(5)
        if self.mode == "huge":
            return web.Response(body=b" " * (2 * 1024 * 1024), content_type="application/json")
        if self.mode == "huge_chunked":
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for _ in range(64):
                await resp.write(b" " * 65536)
            await resp.write_eof()
            return resp
        if self.mode == "redirect":
            raise web.HTTPFound("/elsewhere")
        return web.json_response({"keys": self.keys})

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.redirected += 1
        return web.json_response({"keys": self.keys})


ServerFactory = Callable[[], Awaitable[JwksServer]]


@pytest.fixture
def make_jwks_server(aiohttp_server: Any) -> ServerFactory:
    async def make() -> JwksServer:
        state = JwksServer()
        app = web.Application()
        app.router.add_get("/jwks.json", state.handle)
        app.router.add_get("/elsewhere", state.elsewhere)
        server = await aiohttp_server(app)
        state.base = str(server.make_url("/"))
        state.url = str(server.make_url("/jwks.json"))
        return state

    return make


@pytest.fixture
async def jwks_server(
    make_jwks_server: ServerFactory, rsa_key: KeyPair, ec_key: KeyPair
) -> JwksServer:
    server = await make_jwks_server()
    server.keys = [rsa_key.jwk("rsa-1"), ec_key.jwk("ec-1")]
    return server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


AuthFactory = Callable[..., Authenticator]


@pytest.fixture
async def make_auth(session: aiohttp.ClientSession, clock: FakeClock) -> AsyncIterator[AuthFactory]:
    """Build an Authenticator from an ``auth:`` dict (issuers may be given alone)."""
    made: list[Authenticator] = []

    def make(
        issuers: list[dict[str, Any]] | None = None,
        *,
        auth: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Authenticator:
        section = dict(auth or {})
        if issuers is not None:
            section["issuers"] = issuers
        section.setdefault(
            "clearance",
            {"roles": {"risk_officer": "secret", "teller": "confidential"}},
        )
        authenticator = Authenticator.from_config(
            AuthConfig.model_validate(section),
            LEVELS,
            session=session,
            env=env or {},
            clock=clock.time,
            monotonic=clock.monotonic,
            **kwargs,
        )
        made.append(authenticator)
        return authenticator

    yield make
    for a in made:
        await a.aclose()


def jwks_issuer(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_url": url,
        "algorithms": ["RS256", "ES256"],
        **extra,
    }


@pytest.fixture
def issuer_for() -> Callable[..., dict[str, Any]]:
    """``issuer_for(url, **overrides)`` -> one ``auth.issuers`` entry using that JWKS."""
    return jwks_issuer


def bearer(token: str) -> list[str]:
    return [f"Bearer {token}"]


@pytest.fixture
def as_header() -> Callable[[str], list[str]]:
    return bearer


@pytest.fixture
def forge_token() -> Callable[..., str]:
    return forge


async def reason_of(auth: Authenticator, values: list[str]) -> str:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(values)
    err = info.value
    # Nothing from the request is ever echoed: only the fixed description.
    assert str(err) == REASONS[err.reason].description
    for v in values:
        for part in v.split():
            if len(part) > 8:
                assert part not in str(err)
                assert part not in (err.www_authenticate or "")
    return err.reason


@pytest.fixture
async def auth(make_auth: Any, jwks_server: Any, issuer_for: Any) -> Authenticator:
    a: Authenticator = make_auth([issuer_for(jwks_server.url)])
    return a
