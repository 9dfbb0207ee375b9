"""Identity and access stages end to end: real tokens, real JWKS over HTTP, real upstream."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth.devtoken import mint_token
from gateway.config import Config
from gateway.runtime import compile_config
from gateway.server import Gateway
from tests.conftest import UpstreamFactory

SECRET = "s3cret-for-tests-only-0123456789abcdef-0123456789"
ISSUER = "https://idp.test/"
AUDIENCE = "customer-gateway"


class Recorder:
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append({str(k): v for k, v in request.headers.items()})
        return web.json_response({"ok": True})


def token(claims: dict[str, Any], secret: str = SECRET, **kw: Any) -> str:
    return mint_token(
        {"sub": "alice", **claims}, secret.encode(), issuer=ISSUER, audience=AUDIENCE, **kw
    )


def _window_excluding_now() -> str:
    now = dt.datetime.now(dt.UTC)
    start = (now + dt.timedelta(hours=2)).strftime("%H:%M")
    end = (now + dt.timedelta(hours=3)).strftime("%H:%M")
    return f"{start}-{end} UTC"


@pytest.fixture
async def gw(
    upstream_factory: UpstreamFactory, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> Any:
    monkeypatch.setenv("TEST_HMAC", SECRET)
    rec = Recorder()
    url = await upstream_factory(rec.app)
    config = Config.model_validate(
        {
            "listen": "127.0.0.1:0",
            "upstreams": {"app": {"url": url}},
            "auth": {
                "issuers": [
                    {
                        "issuer": ISSUER,
                        "audience": AUDIENCE,
                        "hmac_secret_env": "TEST_HMAC",
                        "algorithms": ["HS256"],
                    }
                ],
                "clearance": {"roles": {"teller": "public"}},
            },
            "routes": [
                {"name": "public", "path": "/health", "upstream": "app", "auth": "none"},
                {"name": "open", "path": "/open/**", "upstream": "app"},
                {"name": "fwd", "path": "/fwd/**", "upstream": "app", "forward_token": True},
                {
                    "name": "lan",
                    "path": "/lan/**",
                    "upstream": "app",
                    "allow_networks": ["10.0.0.0/8"],
                },
                {
                    "name": "home",
                    "path": "/home/**",
                    "upstream": "app",
                    "allow_networks": ["127.0.0.0/8"],
                },
                {
                    "name": "night",
                    "path": "/night/**",
                    "upstream": "app",
                    "allow_hours": _window_excluding_now(),
                },
            ],
        }
    )
    gateway = Gateway(config, compile_config(config))
    await gateway.start()
    host, port = gateway.addresses[0]
    yield rec, f"http://{host}:{port}"
    await gateway.stop()


async def test_missing_token_is_401_with_www_authenticate_and_upstream_untouched(gw: Any) -> None:
    rec, url = gw
    async with aiohttp.ClientSession() as s, s.get(url + "/open/x") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        body = await resp.json(content_type=None)
        assert body["request_id"] == resp.headers["X-Request-ID"]
    assert rec.seen == []


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda: token({}, secret="wrong-secret-wrong-secret-wrong-secret-123"), 401),
        (lambda: token({}, lifetime=60, now=time.time() - 3600), 401),
        (lambda: "garbage", 401),
        (lambda: jwt.encode({"sub": "x", "iss": ISSUER}, None, algorithm="none"), 401),
    ],
)
async def test_bad_tokens_are_401_and_never_echoed(gw: Any, make: Any, status: int) -> None:
    rec, url = gw
    bad = make()
    headers = {"Authorization": f"Bearer {bad}"}
    async with aiohttp.ClientSession() as s, s.get(url + "/open/x", headers=headers) as resp:
        assert resp.status == status
        assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
        assert bad not in await resp.text()
    assert rec.seen == []


async def test_two_authorization_headers_are_400(gw: Any) -> None:
    rec, url = gw
    good = token({})
    headers = [("Authorization", f"Bearer {good}"), ("Authorization", f"Bearer {good}")]
    async with aiohttp.ClientSession() as s, s.get(url + "/open/x", headers=headers) as resp:
        assert resp.status == 400
    assert rec.seen == []


async def test_identity_headers_are_set_and_spoofs_stripped(gw: Any) -> None:
    rec, url = gw
    headers = {
        "Authorization": f"Bearer {token({'roles': ['teller']})}",
        "X-Gateway-Subject": "mallory",
        "X-Gateway-Clearance": "secret",
    }
    async with aiohttp.ClientSession() as s, s.get(url + "/open/x", headers=headers) as resp:
        assert resp.status == 200
    seen = rec.seen[0]
    assert seen["X-Gateway-Subject"] == "alice"
    assert seen["X-Gateway-Clearance"] == "public"
    assert "Authorization" not in seen


async def test_public_route_strips_identity_spoofs_and_forward_token_route_forwards(
    gw: Any,
) -> None:
    rec, url = gw
    spoof = {"X-Gateway-Subject": "mallory", "X-Gateway-Clearance": "secret"}
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/health", headers=spoof) as resp:
            assert resp.status == 200
        good = token({})
        async with s.get(url + "/fwd/x", headers={"Authorization": f"Bearer {good}"}) as resp:
            assert resp.status == 200
    assert "X-Gateway-Subject" not in rec.seen[0]
    assert rec.seen[0]["X-Gateway-Clearance"] == "public"
    assert rec.seen[1]["Authorization"] == f"Bearer {good}"


async def test_networks_and_hours_are_403(gw: Any) -> None:
    rec, url = gw
    headers = {"Authorization": f"Bearer {token({})}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/lan/x", headers=headers) as resp:
            assert resp.status == 403
        async with s.get(url + "/night/x", headers=headers) as resp:
            assert resp.status == 403
        async with s.get(url + "/home/x", headers=headers) as resp:
            assert resp.status == 200
    assert len(rec.seen) == 1


async def test_min_level_and_rs256_over_a_real_jwks(
    upstream_factory: UpstreamFactory, tmp_path: Any
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "alg": "RS256", "use": "sig"})
    idp = web.Application()

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    idp.router.add_get("/jwks.json", jwks)
    idp_url = await upstream_factory(idp)
    rec = Recorder()
    up = await upstream_factory(rec.app)
    levels = tmp_path / "rules"
    levels.mkdir()
    (levels / "levels.yaml").write_text("levels: [public, internal, confidential, secret]\n")
    config = Config.model_validate(
        {
            "listen": "127.0.0.1:0",
            "upstreams": {"app": {"url": up}},
            "auth": {
                "issuers": [
                    {
                        "issuer": ISSUER,
                        "audience": AUDIENCE,
                        "jwks_url": idp_url + "/jwks.json",
                        "algorithms": ["RS256"],
                    }
                ]
            },
            "rules": str(levels),
            "routes": [
                {"name": "ops", "path": "/ops/**", "upstream": "app", "min_level": "confidential"}
            ],
        }
    )
    gateway = Gateway(config, compile_config(config, env={"GATEWAY_HASH_KEY": "k" * 32}))
    await gateway.start()
    host, port = gateway.addresses[0]
    url = f"http://{host}:{port}/ops/x"

    def rs(clearance: str) -> str:
        now = int(time.time())
        claims = {"sub": "bob", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60}
        claims["clearance"] = clearance
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})

    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url, headers={"Authorization": f"Bearer {rs('internal')}"}) as resp:
                assert resp.status == 403
            async with s.get(url, headers={"Authorization": f"Bearer {rs('secret')}"}) as resp:
                assert resp.status == 200
        assert [h["X-Gateway-Clearance"] for h in rec.seen] == ["secret"]
    finally:
        await gateway.stop()


async def test_static_upstream_credentials_and_trusted_proxy_chain(
    upstream_factory: UpstreamFactory, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.config import load_config

    monkeypatch.setenv("LEGACY_BASIC", "bGVnYWN5OnB3")
    rec = Recorder()
    up = await upstream_factory(rec.app)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        "listen: 127.0.0.1:0\n"
        "upstreams:\n"
        f"  app: {{url: '{up}', headers: {{Authorization: 'Basic ${{LEGACY_BASIC}}'}}}}\n"
        "trusted_proxies: [127.0.0.0/8]\n"
        "routes:\n"
        "  - {name: a, path: '/a/**', upstream: app, auth: none}\n"
        "  - {name: lan, path: '/lan/**', upstream: app, auth: none,\n"
        "     allow_networks: [10.0.0.0/8]}\n",
        encoding="utf-8",
    )
    config = load_config(cfg)
    gateway = Gateway(config, compile_config(config))
    await gateway.start()
    host, port = gateway.addresses[0]
    base = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            # The caller's own Authorization never replaces the upstream's static credentials.
            hdrs = {"X-Forwarded-For": "203.0.113.9, 10.1.2.3", "Authorization": "Bearer x"}
            async with s.get(base + "/a/x", headers=hdrs) as resp:
                assert resp.status == 200
            # Our trusted proxy (the loopback peer) vouches for 10.1.2.3: the LAN route opens.
            async with s.get(base + "/lan/x", headers={"X-Forwarded-For": "10.1.2.3"}) as resp:
                assert resp.status == 200
            async with s.get(base + "/lan/x", headers={"X-Forwarded-For": "8.8.8.8"}) as resp:
                assert resp.status == 403
    finally:
        await gateway.stop()
    assert rec.seen[0]["Authorization"] == "Basic bGVnYWN5OnB3"
    # The trusted chain is extended with the peer the gateway heard from.
    assert rec.seen[0]["X-Forwarded-For"] == "203.0.113.9, 10.1.2.3, 127.0.0.1"
    assert len(rec.seen) == 2
