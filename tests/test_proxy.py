"""End to end through real sockets: client → gateway → real upstream app."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import GatewayFactory, UpstreamFactory, free_port


async def raw_get(gw: str, target: str) -> bytes:
    """Send a request target exactly as written (clients would normalise it first)."""
    reader, writer = await asyncio.open_connection(*gw.removeprefix("http://").split(":"))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    return raw


class Echo:
    """An upstream that records what it received and answers with it as JSON."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/slow", self.slow)
        self.app.router.add_route("*", "/redirect", self.redirect)
        self.app.router.add_route("*", "/big", self.big)
        self.app.router.add_route("*", "/gzip", self.gz)
        self.app.router.add_route("*", "/broken", self.broken)
        self.app.router.add_route("*", "/short", self.short)
        self.app.router.add_route("*", "/nocontent", self.nocontent)
        self.app.router.add_route("*", "/{tail:.*}", self.echo)

    def record(self, request: web.Request, body: bytes = b"") -> dict[str, Any]:
        entry = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": {str(k): v for k, v in request.headers.items()},
            "body_len": len(body),
        }
        self.seen.append(entry)
        return entry

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        entry = self.record(request, body)
        return web.Response(
            body=orjson.dumps(entry),
            content_type="application/json",
            headers={
                "Server": "Apache-Coyote/1.1",
                "X-Powered-By": "Servlet/3.0",
                "Connection": "X-Internal-Hop",
                "X-Internal-Hop": "secret-hop",
                "X-Upstream": "yes",
            },
        )

    async def slow(self, request: web.Request) -> web.Response:
        self.record(request)
        await asyncio.sleep(float(request.query.get("delay", "1")))
        return web.json_response({"slow": True})

    async def redirect(self, request: web.Request) -> web.Response:
        self.record(request)
        host = request.headers.get("Host")
        return web.Response(status=302, headers={"Location": f"http://{host}/api/next?x=1"})

    async def big(self, request: web.Request) -> web.StreamResponse:
        self.record(request)
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b"x" * 65536)
        await resp.write_eof()
        return resp

    async def gz(self, request: web.Request) -> web.Response:
        self.record(request)
        return web.Response(
            body=gzip.compress(b'{"a": 1}'),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async def broken(self, request: web.Request) -> web.StreamResponse:
        self.record(request)
        resp = web.StreamResponse()
        resp.content_length = 100000
        await resp.prepare(request)
        await resp.write(b"y" * 1000)
        assert request.transport is not None
        request.transport.close()
        return resp

    async def short(self, request: web.Request) -> web.StreamResponse:
        """A small body of declared length, cut short."""
        self.record(request)
        resp = web.StreamResponse()
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"y" * 100)
        assert request.transport is not None
        request.transport.close()
        return resp

    async def nocontent(self, request: web.Request) -> web.Response:
        self.record(request)
        return web.Response(status=204)


@pytest.fixture
async def echo_gateway(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> tuple[Echo, str]:
    echo = Echo()
    url = await upstream_factory(echo.app)
    gw = await gateway_factory(
        {"app": {"url": url, "timeout": 2}},
        [
            {"name": "api", "path": "/api/**", "upstream": "app"},
            {"name": "readonly", "path": "/ro/*", "methods": ["GET"], "upstream": "app"},
            {"name": "post-only", "path": "/ro/submit", "methods": ["POST"], "upstream": "app"},
            {"name": "files", "path": "/Files/**", "upstream": "app"},
            {"name": "slow", "path": "/slow", "upstream": "app"},
            {"name": "redirect", "path": "/redirect", "upstream": "app"},
            {"name": "big", "path": "/big", "upstream": "app"},
            {"name": "gzip", "path": "/gzip", "upstream": "app"},
            {"name": "broken", "path": "/broken", "upstream": "app"},
            {"name": "short", "path": "/short", "upstream": "app"},
            {"name": "nocontent", "path": "/nocontent", "upstream": "app"},
        ],
        limits={"max_request_body": 1024},
    )
    return echo, gw


async def test_forwards_allowed_route_and_returns_request_id(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    echo, gw = echo_gateway
    async with client.get(gw + "/api/customers?page=2&size=5") as resp:
        assert resp.status == 200
        body = await resp.json()
        rid = resp.headers["X-Request-ID"]
    assert body["raw_path"] == "/api/customers?page=2&size=5"
    assert len(rid) == 32
    assert echo.seen[0]["headers"]["X-Request-ID"] == rid


async def test_unknown_path_is_404_problem_and_upstream_not_contacted(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    echo, gw = echo_gateway
    async with client.get(gw + "/admin/secrets") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        body = await resp.json(content_type=None)
    assert body["status"] == 404
    assert body["request_id"] == resp.headers["X-Request-ID"]
    assert echo.seen == []


async def test_method_not_allowed_lists_allow_union(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    echo, gw = echo_gateway
    async with client.delete(gw + "/ro/submit") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, HEAD, POST"
    async with client.post(gw + "/ro/submit", data=b"{}") as resp:
        assert resp.status == 200  # the later route allows POST on this path
    async with client.head(gw + "/ro/x") as resp:
        assert resp.status == 200  # HEAD where GET is allowed
    assert [s["method"] for s in echo.seen] == ["POST", "HEAD"]


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/api/a/../b", "/api/b"),
        ("/api/a/%2e%2E/b", "/api/b"),
        ("/api//a///b", "/api/a/b"),
        ("/api/./a/.", "/api/a/"),
        ("/api/%7euser", "/api/~user"),
        ("/api/caf%c3%a9", "/api/caf%C3%A9"),
    ],
)
async def test_forwards_exactly_the_normalised_path(
    echo_gateway: tuple[Echo, str], target: str, forwarded: str
) -> None:
    echo, gw = echo_gateway
    raw = await raw_get(gw, target)
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    assert echo.seen[-1]["raw_path"] == forwarded


@pytest.mark.parametrize(
    "target",
    [
        "/api/a%2Fb",
        "/api/a%2fb",
        "/api/a\\b",
        "/api/a%5Cb",
        "/api/..;/x",
        "/api/%252e%252e/x",
        "/api/%zz",
        "/api/../../etc/passwd",
        "/api/a%00b",
    ],
)
async def test_ambiguous_paths_are_400_and_never_forwarded(
    echo_gateway: tuple[Echo, str], target: str
) -> None:
    echo, gw = echo_gateway
    raw = await raw_get(gw, target)
    assert raw.startswith(b"HTTP/1.1 400"), raw[:200]
    assert b"application/problem+json" in raw
    assert echo.seen == []


async def test_dot_segments_cannot_escape_into_an_unlisted_path(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    echo, gw = echo_gateway
    async with client.get(gw + "/api/../admin", allow_redirects=False) as resp:
        # aiohttp's client normalises too; send raw below to be sure.
        assert resp.status == 404
    raw = await raw_get(gw, "/api/%2e%2e/admin")
    assert raw.startswith(b"HTTP/1.1 404")
    assert echo.seen == []


async def test_case_insensitive_upstream_matches_any_case(
    upstream_factory: UpstreamFactory,
    gateway_factory: GatewayFactory,
    client: aiohttp.ClientSession,
) -> None:
    echo = Echo()
    url = await upstream_factory(echo.app)
    gw = await gateway_factory(
        {"iis": {"url": url, "case_insensitive": True}, "unix": {"url": url}},
        [
            {"name": "ci", "path": "/Legacy/**", "upstream": "iis"},
            {"name": "cs", "path": "/strict/**", "upstream": "unix"},
        ],
    )
    async with client.get(gw + "/LEGACY/Customers") as resp:
        assert resp.status == 200
    async with client.get(gw + "/STRICT/x") as resp:
        assert resp.status == 404
    assert echo.seen[0]["raw_path"] == "/LEGACY/Customers"


async def test_hop_by_hop_and_spoofed_forwarding_headers_are_stripped(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    echo, gw = echo_gateway
    headers = {
        "Connection": "keep-alive, X-Drop-Me",
        "X-Drop-Me": "1",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "TE": "trailers",
        "X-Forwarded-For": "1.2.3.4",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=1.2.3.4",
        "X-Real-IP": "1.2.3.4",
        "X-Keep": "kept",
        "Authorization": "Bearer abc",
    }
    async with client.get(gw + "/api/h", headers=headers) as resp:
        assert resp.status == 200
        # Response side: Connection-named, Server and X-Powered-By are gone.
        assert "X-Internal-Hop" not in resp.headers
        assert "X-Powered-By" not in resp.headers
        assert resp.headers.get("Server", "").find("Coyote") < 0
        assert resp.headers["X-Upstream"] == "yes"
    seen = {k.lower(): v for k, v in echo.seen[0]["headers"].items()}
    for gone in ("x-drop-me", "keep-alive", "proxy-authorization", "te", "forwarded", "x-real-ip"):
        assert gone not in seen, gone
    assert "authorization" not in seen  # not forwarded unless the route says so
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == gw.removeprefix("http://")
    assert seen["x-keep"] == "kept"


async def test_location_pointing_at_upstream_is_rewritten(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    _, gw = echo_gateway
    async with client.get(gw + "/redirect", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == gw + "/api/next?x=1"


async def test_upstream_unreachable_is_502_without_internals(
    gateway_factory: GatewayFactory, client: aiohttp.ClientSession
) -> None:
    port = free_port()
    gw = await gateway_factory(
        {"down": {"url": f"http://127.0.0.1:{port}"}},
        [{"name": "x", "path": "/**", "upstream": "down"}],
    )
    async with client.get(gw + "/anything") as resp:
        assert resp.status == 502
        text = await resp.text()
    assert str(port) not in text and "127.0.0.1" not in text
    assert orjson.loads(text)["request_id"] == resp.headers["X-Request-ID"]


async def test_upstream_timeout_is_504(
    upstream_factory: UpstreamFactory,
    gateway_factory: GatewayFactory,
    client: aiohttp.ClientSession,
) -> None:
    echo = Echo()
    url = await upstream_factory(echo.app)
    gw = await gateway_factory(
        {"app": {"url": url, "timeout": 0.3}},
        [{"name": "slow", "path": "/slow", "upstream": "app"}],
    )
    async with client.get(gw + "/slow?delay=2") as resp:
        assert resp.status == 504
        assert resp.content_type == "application/problem+json"


async def test_request_body_over_cap_is_413_and_not_forwarded(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    echo, gw = echo_gateway
    async with client.post(gw + "/api/upload", data=b"z" * 2048) as resp:
        assert resp.status == 413
    assert echo.seen == []


async def test_chunked_request_body_over_cap_is_413(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    echo, gw = echo_gateway

    async def gen():  # type: ignore[no-untyped-def]
        for _ in range(8):
            yield b"z" * 512

    async with client.post(gw + "/api/upload", data=gen()) as resp:
        assert resp.status == 413
    # The upstream may have started receiving, but never got a complete body.
    assert all(s["body_len"] <= 1024 for s in echo.seen)


async def test_request_body_streams_within_cap(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    echo, gw = echo_gateway
    async with client.post(gw + "/api/upload", data=b"q" * 1000) as resp:
        assert resp.status == 200
        assert (await resp.json())["body_len"] == 1000
    assert echo.seen[0]["headers"]["Content-Length"] == "1000"


async def test_large_response_streams_through(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    _, gw = echo_gateway
    async with client.get(gw + "/big") as resp:
        assert resp.status == 200
        total = 0
        async for chunk in resp.content.iter_any():
            total += len(chunk)
    assert total == 64 * 65536


async def test_pass_through_route_keeps_content_encoding(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    _, gw = echo_gateway
    async with client.get(gw + "/gzip", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(await resp.read()) == b'{"a": 1}'


async def test_gateway_does_not_invent_accept_encoding(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    echo, gw = echo_gateway
    async with client.get(gw + "/api/plain", skip_auto_headers=["Accept-Encoding"]) as resp:
        assert resp.status == 200
    assert "Accept-Encoding" not in echo.seen[0]["headers"]


async def test_upstream_dying_mid_body_aborts_the_client_connection(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    _, gw = echo_gateway
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(gw + "/broken") as resp:
            await resp.read()


async def test_small_body_cut_short_is_a_502_never_a_short_200(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    _, gw = echo_gateway
    async with client.get(gw + "/short") as resp:
        assert resp.status == 502  # read whole before anything is sent
        assert b"yyyy" not in await resp.read()


async def test_small_body_is_relayed_whole_with_its_length(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    _, gw = echo_gateway
    async with client.get(gw + "/api/x") as resp:
        body = await resp.read()
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(body))
        assert "Transfer-Encoding" not in resp.headers


async def test_head_and_204_have_no_body(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    _, gw = echo_gateway
    async with client.head(gw + "/api/x") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    async with client.get(gw + "/nocontent") as resp:
        assert resp.status == 204
        assert await resp.read() == b""


async def test_request_id_is_propagated_when_sane_and_replaced_when_not(
    echo_gateway: tuple[Echo, str], client: aiohttp.ClientSession
) -> None:
    echo, gw = echo_gateway
    async with client.get(gw + "/api/x", headers={"X-Request-ID": "abc-123"}) as resp:
        assert resp.headers["X-Request-ID"] == "abc-123"
    async with client.get(gw + "/api/x", headers={"X-Request-ID": "bad id\twith spaces"}) as resp:
        assert resp.headers["X-Request-ID"] != "bad id\twith spaces"
    assert echo.seen[0]["headers"]["X-Request-ID"] == "abc-123"


async def test_page_size_is_clamped_and_duplicates_refused(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    echo = Echo()
    url = await upstream_factory(echo.app)
    gw = await gateway_factory(
        {"app": {"url": url}},
        [{"name": "list", "path": "/api/**", "upstream": "app", "page_size": {"max": 50}}],
    )
    assert (await raw_get(gw, "/api/c?page=1&size=100000")).startswith(b"HTTP/1.1 200")
    assert echo.seen[-1]["raw_path"] == "/api/c?page=1&size=50"
    assert (await raw_get(gw, "/api/c?size=1&size=100000")).startswith(b"HTTP/1.1 400")
    assert len(echo.seen) == 1
