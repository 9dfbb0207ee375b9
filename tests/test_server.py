"""The gateway process: TLS on both sides, graceful shutdown of a real `gateway serve`."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import signal
import ssl
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import GatewayFactory, UpstreamFactory, free_port, start_app


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA and a server certificate for 127.0.0.1 signed by it."""
    d = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test-ca"))
        .issuer_name(_name("test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, paths["key"])
    return paths


def _server_ctx(pki: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki["cert"], pki["key"])
    return ctx


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": request.path})


@pytest.fixture
async def tls_upstream(upstream_factory: UpstreamFactory, pki: dict[str, Path]) -> str:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _hello)
    return await upstream_factory(app, ssl_context=_server_ctx(pki))


async def test_tls_listener_serves_https(
    pki: dict[str, Path], upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _hello)
    up = await upstream_factory(app)
    gw = await gateway_factory(
        {"u": {"url": up}},
        [{"name": "a", "path": "/**", "upstream": "u"}],
        tls={"cert_file": str(pki["cert"]), "key_file": str(pki["key"])},
    )
    assert gw.startswith("https://")
    client_ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    async with aiohttp.ClientSession() as s, s.get(gw + "/x", ssl=client_ctx) as resp:
        assert resp.status == 200
        assert await resp.json() == {"hello": "/x"}


async def test_upstream_tls_is_verified_with_the_configured_ca(
    tls_upstream: str, pki: dict[str, Path], gateway_factory: GatewayFactory
) -> None:
    gw = await gateway_factory(
        {"u": {"url": tls_upstream, "ca_file": str(pki["ca"])}},
        [{"name": "a", "path": "/**", "upstream": "u"}],
    )
    async with aiohttp.ClientSession() as s, s.get(gw + "/y") as resp:
        assert resp.status == 200
        assert await resp.json() == {"hello": "/y"}


async def test_upstream_tls_with_unknown_ca_fails_closed(
    tls_upstream: str, gateway_factory: GatewayFactory
) -> None:
    gw = await gateway_factory(
        {"u": {"url": tls_upstream}}, [{"name": "a", "path": "/**", "upstream": "u"}]
    )
    async with aiohttp.ClientSession() as s, s.get(gw + "/y") as resp:
        assert resp.status == 502
        assert "certificate" not in (await resp.text()).lower()


async def test_sigterm_finishes_in_flight_requests_then_exits(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(1.0)
        return web.json_response({"done": True})

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner, up = await start_app(app)
    port = free_port()
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"upstreams: {{u: {{url: '{up}'}}}}\n"
        "routes: [{name: a, path: /slow, upstream: u, auth: none}]\n"
        "limits: {shutdown_timeout: 10}\n",
        encoding="utf-8",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "-c",
        str(cfg),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as s:
            in_flight = asyncio.create_task(s.get(f"http://127.0.0.1:{port}/slow"))
            await asyncio.wait_for(started.wait(), 5)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # No new connections once draining began.
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
            resp = await in_flight
            assert resp.status == 200
            assert await resp.json() == {"done": True}
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await runner.cleanup()
