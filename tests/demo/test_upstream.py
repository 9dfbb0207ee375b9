from __future__ import annotations

import asyncio
import copy
import csv
import gzip
import io
import socket
import sys
import xml.etree.ElementTree as ET
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.demo.data import REGIONS, generate_customers, to_json_bytes
from gateway.demo.upstream import accepts_gzip, create_app

CUSTOMERS = generate_customers(45)
Client = TestClient[web.Request, web.Application]
PLAIN = {"Accept-Encoding": "identity"}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(create_app(CUSTOMERS))


@pytest.fixture
async def raw_client(aiohttp_client: AiohttpClient) -> Client:
    """A client that shows the bytes on the wire, compressed or not."""
    return await aiohttp_client(create_app(CUSTOMERS), auto_decompress=False)


async def test_health(client: Client) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await resp.read() == b'{"status":"ok"}'


@pytest.mark.parametrize(
    ("query", "page", "size", "ids"),
    [
        ("", 1, 20, range(1, 21)),
        ("?page=2", 2, 20, range(21, 41)),
        ("?page=3&size=20", 3, 20, range(41, 46)),
        ("?page=4", 4, 20, range(0)),
        ("?size=1000", 1, 1000, range(1, 46)),  # no cap: the legacy app hands out everything
        ("?page=2&size=7", 2, 7, range(8, 15)),
    ],
)
async def test_paging(client: Client, query: str, page: int, size: int, ids: range) -> None:
    resp = await client.get("/api/customers" + query)
    assert resp.status == 200
    data = [CUSTOMERS[i - 1] for i in ids]
    expected = {"data": data, "page": page, "size": size, "total": 45}
    assert await resp.read() == to_json_bytes(expected)


@pytest.mark.parametrize("query", ["page=0", "size=0", "page=-1", "size=abc", "page=1.5", "size=٣"])
async def test_bad_paging_is_400_json(client: Client, query: str) -> None:
    resp = await client.get("/api/customers?" + query)
    assert resp.status == 400
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["code"] == 400 and "positive integer" in body["error"]


async def test_get_by_id_and_404(client: Client) -> None:
    resp = await client.get("/api/customers/7")
    assert resp.status == 200
    assert await resp.read() == to_json_bytes({"data": CUSTOMERS[6]})

    for path in ("/api/customers/46", "/api/customers/0", "/api/customers/abc"):
        resp = await client.get(path)
        assert resp.status == 404, path
        assert await resp.json() == {"error": "not found", "code": 404}


async def test_method_not_allowed_keeps_allow_header(client: Client) -> None:
    resp = await client.delete("/api/customers/1")
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"]
    assert (await resp.json())["code"] == 405


async def test_export_xml(client: Client) -> None:
    resp = await client.get("/api/customers/export.xml?page=2&size=10")
    assert resp.status == 200
    assert resp.content_type == "application/xml"
    root = ET.fromstring(await resp.read())
    assert root.tag == "customers" and root.get("total") == "45"
    rows = root.findall("customer")
    assert [int(r.findtext("id", "")) for r in rows] == list(range(11, 21))
    first, source = rows[0], CUSTOMERS[10]
    assert first.findtext("id_number") == source["id_number"]
    assert first.findtext("balance") == str(source["balance"])
    accounts = first.findall("accounts/account")
    assert len(accounts) == len(source["accounts"])
    assert accounts[0].findtext("account_id") == str(source["accounts"][0]["account_id"])


async def test_export_xml_escapes_markup(aiohttp_client: AiohttpClient) -> None:
    customers = copy.deepcopy(CUSTOMERS[:1])
    customers[0]["remarks"] = "客户说 <b>\"急\" & '加急'</b>"
    client = await aiohttp_client(create_app(customers))
    root = ET.fromstring(await (await client.get("/api/customers/export.xml")).read())
    assert root.findtext("customer/remarks") == customers[0]["remarks"]


async def test_export_csv(client: Client) -> None:
    resp = await client.get("/api/customers/export.csv?size=45")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO((await resp.read()).decode("utf-8"))))
    assert len(rows) == 45
    assert "accounts" not in rows[0] and "account_numbers" in rows[0]
    for row, source in zip(rows, CUSTOMERS, strict=True):
        assert row["id_number"] == source["id_number"]
        assert row["remarks"] == source["remarks"]
        assert row["balance"] == str(source["balance"])
        assert row["account_numbers"].split(";") == [a["number"] for a in source["accounts"]]


@pytest.mark.parametrize(
    "path",
    ["/api/customers?size=30", "/api/customers/export.xml", "/api/customers/export.csv"],
)
async def test_gzip_only_when_accepted(raw_client: Client, path: str) -> None:
    plain = await raw_client.get(path, headers=PLAIN)
    plain_body = await plain.read()
    assert "Content-Encoding" not in plain.headers
    assert "Accept-Encoding" in plain.headers["Vary"]

    packed = await raw_client.get(path, headers={"Accept-Encoding": "gzip, deflate"})
    raw = await packed.read()
    assert packed.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in packed.headers["Vary"]
    assert int(packed.headers["Content-Length"]) == len(raw)
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw) == plain_body
    assert packed.headers["Content-Type"] == plain.headers["Content-Type"]


async def test_gzip_refused_explicitly(raw_client: Client) -> None:
    resp = await raw_client.get("/api/customers/1", headers={"Accept-Encoding": "gzip;q=0, br"})
    assert "Content-Encoding" not in resp.headers
    assert await resp.read() == to_json_bytes({"data": CUSTOMERS[0]})


async def test_auto_decompressing_client_sees_plain_json(client: Client) -> None:
    resp = await client.get("/api/customers/3")
    assert resp.headers["Content-Encoding"] == "gzip"
    assert await resp.read() == to_json_bytes({"data": CUSTOMERS[2]})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ("identity", False),
        ("gzip", True),
        ("GZIP;q=0.5", True),
        ("deflate, gzip;q=0", False),
        ("*", True),
        ("*;q=0", False),
        ("*, gzip;q=0", False),
        ("br, *;q=0.1", True),
        ("x-gzip", True),
        ("gzip;q=nonsense", False),
    ],
)
def test_accepts_gzip(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected


async def test_statement_leaks_a_java_stack_trace(raw_client: Client) -> None:
    resp = await raw_client.get("/api/customers/5/statement", headers={"Accept-Encoding": "gzip"})
    assert resp.status == 500
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "Content-Encoding" not in resp.headers
    text = (await resp.read()).decode()
    assert text.startswith("java.lang.")
    assert CUSTOMERS[4]["id_number"] in text and CUSTOMERS[4]["phone"] in text
    assert (await raw_client.get("/api/customers/99/statement")).status == 404


async def test_ops_branches(client: Client) -> None:
    resp = await client.get("/api/ops/branches")
    assert resp.status == 200
    body = await resp.json()
    assert isinstance(body, list) and len(body) == len(REGIONS)
    assert {"code", "name", "city"} <= set(body[0])


async def test_ops_notes_echo_exactly_with_an_id(client: Client) -> None:
    sent = '{"text":"客户来电","amount":1.10,"big":123456789012345678901234,"id":"mine"}'
    resp = await client.post(
        "/api/ops/notes", data=sent.encode(), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 201
    expected = '{"id":1,"text":"客户来电","amount":1.10,"big":123456789012345678901234}'
    assert (await resp.read()).decode() == expected
    second = await client.post("/api/ops/notes", json={"text": "第二条"})
    assert (await second.json())["id"] == 2


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
async def test_ops_notes_rejects_bad_bodies(client: Client, body: bytes) -> None:
    resp = await client.post("/api/ops/notes", data=body)
    assert resp.status == 400
    assert (await resp.json())["code"] == 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_main_runs_as_a_module() -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.demo.upstream",
        "--host", "127.0.0.1", "--port", str(port), "--count", "3",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    body: Any = None
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/api/customers") as resp:
                        body = await resp.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        _, stderr = await proc.communicate()
    assert body is not None, stderr.decode()
    assert body["total"] == 3
    assert b"RuntimeWarning" not in stderr
