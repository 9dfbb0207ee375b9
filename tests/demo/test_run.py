"""`gateway demo` end to end: its upstream, its gateway, the tokens it prints."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.demo.data import generate_customers
from gateway.demo.run import Demo, banner, start_demo
from tests.conftest import free_port


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    d = await start_demo("127.0.0.1", free_port(), free_port())
    yield d
    await d.stop()


def _auth(demo: Demo, var: str) -> dict[str, str]:
    token = next(t for v, _, t in demo.tokens if v == var)
    return {"Authorization": f"Bearer {token}"}


async def test_each_clearance_sees_its_own_view(demo: Demo) -> None:
    raw = generate_customers()[0]
    url = demo.gateway_url + "/api/customers/1"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as resp:
            assert resp.status == 401
        views = {}
        for var in ("T_PUBLIC", "T_INTERNAL", "T_CONFIDENTIAL", "T_SECRET", "T_RISK"):
            async with s.get(url, headers=_auth(demo, var)) as resp:
                assert resp.status == 200
                views[var] = (await resp.read()).decode()
    for view in views.values():
        assert raw["txn_password"] not in view and '"password"' not in view
    assert raw["id_number"] not in views["T_INTERNAL"]
    assert raw["phone"] not in views["T_CONFIDENTIAL"]
    assert raw["phone"][:3] + "****" + raw["phone"][-4:] in views["T_CONFIDENTIAL"]
    assert raw["id_number"] in views["T_SECRET"]
    assert str(raw["balance"]) not in views["T_SECRET"]  # secret without need-to-know
    assert str(raw["balance"]) in views["T_RISK"]
    assert raw["name"] not in views["T_PUBLIC"]


async def test_routes_levels_and_allow_list(demo: Demo) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(demo.gateway_url + "/health") as resp:
            assert resp.status == 200
        async with s.get(
            demo.gateway_url + "/api/ops/branches", headers=_auth(demo, "T_PUBLIC")
        ) as resp:
            assert resp.status == 403
        async with s.get(
            demo.gateway_url + "/api/ops/branches", headers=_auth(demo, "T_INTERNAL")
        ) as resp:
            assert resp.status == 200
        async with s.get(demo.gateway_url + "/internal/admin") as resp:
            assert resp.status == 404
        xml = demo.gateway_url + "/api/customers/export.xml"
        async with s.get(xml, headers=_auth(demo, "T_SECRET")) as resp:
            assert resp.status == 502


def test_banner_has_a_curl_line_per_token(demo: Demo) -> None:
    text = banner(demo.gateway_url, demo.upstream_url, demo.tokens, demo.secret)
    for var, _, token in demo.tokens:
        assert f"export {var}='{token}'" in text
        assert f'Bearer ${var}" {demo.gateway_url}/api/customers/1' in text


async def test_paging_through_the_customers_hits_the_bulk_read_quota(demo: Demo) -> None:
    statuses = []
    async with aiohttp.ClientSession(headers=_auth(demo, "T_INTERNAL")) as s:
        for page in (1, 2, 3):
            url = f"{demo.gateway_url}/api/customers?page={page}&size=500"
            async with s.get(url) as resp:
                statuses.append(resp.status)
                body = await resp.json(content_type=None)
                if resp.status == 200:
                    assert len(body["data"]) == 50  # the page size is clamped
                else:
                    assert body["quota"] == "bulk-read" and "data" not in body
    assert statuses == [200, 200, 429]
