"""Fail closed on policy routes, end to end: whatever the upstream sends, the caller
gets the masked document or a generic error, never bytes the policy has not seen."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import brotli
import orjson
import pytest
from aiohttp import web

from gateway.config import Config
from gateway.runtime import compile_config
from gateway.server import Gateway
from tests.conftest import UpstreamFactory

RULES = Path(__file__).parent / "data" / "product_rules"
SECRET_VALUES = [b"13812345678", b"11010519491231002X", b"hunter2", b"6222021234567890123"]
RECORD = (
    b'{"id":1,"phone":"13812345678","password":"hunter2","id_number":"11010519491231002X",'
    b'"bank_card":"6222021234567890123","note":"\xe5\xbc\xa0\xe4\xb8\x89"}'
)
# The same record as public (lowest level) sees it with the PRODUCT.md rules.
MASKED = {
    "id": 1,
    "id_number": "110105********002X",
    "bank_card": "622202*********0123",
    "note": "张三",
}
DOC = b'{"data":[' + RECORD + b"]}"

Responder = Callable[[web.Request], web.StreamResponse]


def json_response(body: bytes, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        body=body, status=status, headers={"Content-Type": "application/json", **headers}
    )


class Scripted:
    """An upstream whose answer per path is set by the test; it records requests."""

    def __init__(self) -> None:
        self.answers: dict[str, Responder] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, {str(k): v for k, v in request.headers.items()}))
        answer = self.answers[request.path]
        resp = answer(request)
        if hasattr(resp, "__await__"):
            resp = await resp  # type: ignore[misc]
        return resp


@pytest.fixture
async def env(upstream_factory: UpstreamFactory) -> Any:
    up = Scripted()
    url = await upstream_factory(up.app)
    config = Config.model_validate(
        {
            "listen": "127.0.0.1:0",
            # Static upstream headers: kept, except those a policy route never sends.
            "upstreams": {
                "app": {
                    "url": url,
                    "timeout": 5,
                    "headers": {"X-Static": "s", "Range": "bytes=0-1", "If-Match": '"v0"'},
                }
            },
            "routes": [
                {
                    "name": "csv",
                    "path": "/csv/**",
                    "upstream": "app",
                    "auth": "none",
                    "policy": "customer",
                    "pass_through": ["text/csv"],
                },
                {
                    "name": "c",
                    "path": "/**",
                    "upstream": "app",
                    "auth": "none",
                    "policy": "customer",
                },
            ],
            "rules": str(RULES),
            "limits": {"max_response_body": 64 * 1024},
        }
    )
    gateway = Gateway(config, compile_config(config, env={"GATEWAY_HASH_KEY": "k" * 32}))
    await gateway.start()
    host, port = gateway.addresses[0]
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield up, f"http://{host}:{port}", session
    await gateway.stop()


def assert_withheld(body: bytes) -> None:
    for value in SECRET_VALUES:
        assert value not in body
    problem = orjson.loads(body)
    assert problem["detail"] == "The upstream response could not be delivered safely."


async def test_json_is_masked_exactly(env: Any) -> None:
    up, gw, s = env
    up.answers["/x"] = lambda r: json_response(DOC, ETag='"abc"', **{"Cache-Control": "max-age=60"})
    async with s.get(gw + "/x") as resp:
        assert resp.status == 200
        assert orjson.loads(await resp.read()) == {"data": [MASKED]}
        assert "ETag" not in resp.headers
        assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("invalid json", lambda r: json_response(b'{"data":[{"phone":"13812345678"}')),
        ("not utf-8", lambda r: json_response(b'{"phone":"13812345678","n":"\xff\xfe"}')),
        ("bom", lambda r: json_response(b"\xef\xbb\xbf" + DOC)),
        ("nan", lambda r: json_response(b'{"phone":"13812345678","x":NaN}')),
        ("text/plain json", lambda r: web.Response(body=DOC, content_type="text/plain")),
        (
            "xml",
            lambda r: web.Response(
                body=b"<c><phone>13812345678</phone></c>", content_type="application/xml"
            ),
        ),
        (
            "html",
            lambda r: web.Response(body=b"<html>13812345678</html>", content_type="text/html"),
        ),
        ("csv", lambda r: web.Response(body=b"id,phone\n1,13812345678\n", content_type="text/csv")),
        ("no content type", lambda r: web.Response(body=DOC, headers={"Content-Type": ""})),
        (
            "utf-16 charset",
            lambda r: web.Response(
                body=DOC, headers={"Content-Type": "application/json; charset=utf-16"}
            ),
        ),
        (
            "too large",
            lambda r: json_response(b'{"pad":"' + b"a" * 70000 + b'","phone":"13812345678"}'),
        ),
        (
            "gzip bomb",
            lambda r: json_response(
                gzip.compress(b"[" + b" " * 5_000_000 + b"]"), **{"Content-Encoding": "gzip"}
            ),
        ),
        (
            "corrupt gzip",
            lambda r: json_response(gzip.compress(DOC)[:-12], **{"Content-Encoding": "gzip"}),
        ),
        ("unknown coding", lambda r: json_response(DOC, **{"Content-Encoding": "compress"})),
        (
            "upstream 206",
            lambda r: json_response(DOC[:40], status=206, **{"Content-Range": "bytes 0-39/200"}),
        ),
        ("deep nesting", lambda r: json_response(b"[" * 5000 + b"]" * 5000)),
        ("nesting over the limit", lambda r: json_response(b'{"a":' * 300 + b"1" + b"}" * 300)),
    ],
)
async def test_fails_closed(env: Any, name: str, make: Responder) -> None:
    up, gw, s = env
    up.answers["/x"] = make
    async with s.get(gw + "/x") as resp:
        assert resp.status == 502, name
        assert resp.content_type == "application/problem+json"
        assert_withheld(await resp.read())


async def test_truncated_body_fails_closed(env: Any) -> None:
    up, gw, s = env

    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(DOC)
        await resp.prepare(request)
        await resp.write(DOC[: len(DOC) // 2])
        assert request.transport is not None
        request.transport.close()
        return resp

    up.answers["/x"] = cut
    async with s.get(gw + "/x") as resp:
        assert resp.status == 502
        assert_withheld(await resp.read())


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),
    ],
)
async def test_compressed_bodies_are_decoded_masked_and_sent_plain(
    env: Any, coding: str, encode: Callable[[bytes], bytes]
) -> None:
    up, gw, s = env
    up.answers["/x"] = lambda r: json_response(encode(DOC), **{"Content-Encoding": coding})
    async with s.get(gw + "/x", headers={"Accept-Encoding": "gzip, br"}) as resp:
        assert resp.status == 200
        assert "Content-Encoding" not in resp.headers
        assert orjson.loads(await resp.read()) == {"data": [MASKED]}
    assert up.seen[0][1]["Accept-Encoding"] == "identity"


async def test_range_and_conditionals_never_reach_the_upstream(env: Any) -> None:
    up, gw, s = env
    up.answers["/x"] = lambda r: json_response(DOC, ETag='"v1"')
    headers = {
        "Range": "bytes=0-20",
        "If-Range": '"v1"',
        "If-None-Match": '"v1"',
        "If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT",
    }
    async with s.get(gw + "/x", headers=headers) as resp:
        assert resp.status == 200
        assert orjson.loads(await resp.read()) == {"data": [MASKED]}
        assert "Accept-Ranges" not in resp.headers and "ETag" not in resp.headers
    seen = up.seen[0][1]
    for h in (*headers, "If-Match"):
        assert h not in seen
    assert seen["X-Static"] == "s"


async def test_head_describes_the_masked_body(env: Any) -> None:
    up, gw, s = env
    up.answers["/x"] = lambda r: json_response(DOC)
    async with s.get(gw + "/x") as resp:
        full = await resp.read()
    async with s.head(gw + "/x") as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == len(full)
        assert await resp.read() == b""
    assert [m for m, _ in up.seen] == ["GET", "GET"]


async def test_error_json_is_masked_and_error_pages_replaced(env: Any) -> None:
    up, gw, s = env
    up.answers["/json404"] = lambda r: json_response(b'{"error":"no","phone":"13812345678"}', 404)
    up.answers["/trace"] = lambda r: web.Response(
        status=500,
        text="java.lang.NullPointerException: id 11010519491231002X\n\tat com.bank.Crm",
    )
    async with s.get(gw + "/json404") as resp:
        assert resp.status == 404
        assert orjson.loads(await resp.read()) == {"error": "no"}
    async with s.get(gw + "/trace") as resp:
        assert resp.status == 500
        body = await resp.read()
        assert b"11010519491231002X" not in body and b"java" not in body
        assert resp.content_type == "application/problem+json"


async def test_values_come_through_exactly(env: Any) -> None:
    up, gw, s = env
    raw = (
        '{"z":1,"account":12345678901234567890,"amount":100.10,"exp":1E5,'
        '"name":"欧阳娜娜 \\u00e9","a":[1.0,-0]}'
    ).encode()
    up.answers["/x"] = lambda r: json_response(raw)
    async with s.get(gw + "/x") as resp:
        assert (
            await resp.read()
            == (
                '{"z":1,"account":12345678901234567890,"amount":100.10,"exp":1E5,'
                '"name":"欧阳娜娜 é","a":[1.0,-0]}'
            ).encode()
        )


async def test_duplicate_keys_never_let_an_unmasked_copy_through(env: Any) -> None:
    up, gw, s = env
    up.answers["/x"] = lambda r: json_response(
        b'{"data":[{"id":1,"phone":"13812345678","phone":"13900000000",'
        b'"password":"hunter2","password":"x"}]}'
    )
    async with s.get(gw + "/x") as resp:
        body = await resp.read()
    assert orjson.loads(body) == {"data": [{"id": 1}]}
    assert b"13812345678" not in body and b"hunter2" not in body


async def test_empty_bodies_pass_with_their_status(env: Any) -> None:
    up, gw, s = env
    up.answers["/x"] = lambda r: web.Response(status=204)
    async with s.get(gw + "/x") as resp:
        assert resp.status == 204
        assert await resp.read() == b""


async def test_pass_through_media_type_is_relayed_on_its_route_only(env: Any) -> None:
    up, gw, s = env
    csv = b"id,phone\n1,13812345678\n"
    up.answers["/csv/export"] = lambda r: web.Response(body=csv, content_type="text/csv")
    async with s.get(gw + "/csv/export") as resp:
        assert resp.status == 200
        assert await resp.read() == csv
