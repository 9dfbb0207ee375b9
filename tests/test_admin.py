"""The admin listener: open probes, token-guarded /admin/*, reload passthrough, SSE audit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import metrics
from gateway.admin import create_admin_app
from gateway.audit.broadcast import AuditBroadcaster
from tests.conftest import wait_for

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
TOKEN = "s3cret-admin-token"


class State:
    def __init__(self) -> None:
        self.ready: tuple[bool, list[str]] = (True, [])
        self.reload_result: tuple[int, dict[str, Any]] = (200, {"version": "v2"})
        self.reloads = 0
        self.broadcaster = AuditBroadcaster()

    async def reload(self) -> tuple[int, dict[str, Any]]:
        self.reloads += 1
        return self.reload_result


@pytest.fixture
def state() -> State:
    return State()


@pytest.fixture
def make(aiohttp_client: Any, state: State) -> MakeClient:
    async def make(token: str | None = TOKEN, **kw: Any) -> Client:
        app = create_admin_app(
            token=token,
            metrics_body=metrics.metrics_body,
            ready=lambda: state.ready,
            reload=state.reload,
            audit_broadcast=state.broadcaster,
            **kw,
        )
        client: Client = await aiohttp_client(app)
        return client

    return make


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_metrics_healthz_readyz_are_open(make: MakeClient, state: State) -> None:
    client = await make()
    metrics.set_state_up(True)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == metrics.CONTENT_TYPE
    assert "gateway_state_up" in await resp.text()
    resp = await client.get("/healthz")
    assert resp.status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["status"] == "ready"


async def test_readyz_503_names_failing_checks(make: MakeClient, state: State) -> None:
    client = await make()
    state.ready = (False, ["state", "audit"])
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {"status": "unavailable", "failing": ["state", "audit"]}


@pytest.mark.parametrize("token", [None, ""])
async def test_admin_disabled_without_a_token(
    make: MakeClient, state: State, token: str | None
) -> None:
    client = await make(token=token)
    for headers in ({}, auth(""), auth("anything")):
        resp = await client.post("/admin/reload", headers=headers)
        assert resp.status == 503
        assert resp.content_type == "application/problem+json"
        assert "disabled" in (await resp.json())["detail"]
    assert state.reloads == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
    ],
)
async def test_wrong_token_is_401(make: MakeClient, state: State, headers: dict[str, str]) -> None:
    client = await make()
    resp = await client.post("/admin/reload", headers=headers)
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    body = await resp.json()
    assert body["status"] == 401 and body["request_id"]
    assert TOKEN not in await resp.text()
    assert state.reloads == 0
    # Unknown /admin paths are guarded too (no route discovery without the token).
    assert (await client.get("/admin/nope", headers=headers)).status == 401


async def test_reload_passthrough(make: MakeClient, state: State) -> None:
    client = await make()
    resp = await client.post("/admin/reload", headers=auth())
    assert resp.status == 200 and await resp.json() == {"version": "v2"}
    state.reload_result = (422, {"errors": ["rules/customer.yaml: fields[0].paths: bad"]})
    resp = await client.post("/admin/reload", headers=auth())
    assert resp.status == 422
    assert await resp.json() == {"errors": ["rules/customer.yaml: fields[0].paths: bad"]}
    assert state.reloads == 2
    assert (await client.get("/admin/reload", headers=auth())).status == 405


async def read_event(resp: Any) -> tuple[str, str]:
    """The next SSE event (skipping comments): (event, data)."""
    event, data = "message", ""
    while True:
        raw = await asyncio.wait_for(resp.content.readline(), 5)
        line = raw.decode().rstrip("\n")
        if line == "":
            if data:
                return event, data
            continue
        if line.startswith(":"):
            continue
        key, _, val = line.partition(": ")
        if key == "event":
            event = val
        elif key == "data":
            data = val


async def test_audit_stream_filters_by_subject(make: MakeClient, state: State) -> None:
    client = await make()
    assert (await client.get("/admin/audit/stream")).status == 401
    resp = await client.get("/admin/audit/stream?subject=alice", headers=auth())
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    await wait_for(lambda: state.broadcaster.subscribers > 0)  # subscribed after the headers
    state.broadcaster.publish({"request_id": "r1", "subject": "bob", "decision": "allow"})
    state.broadcaster.publish({"request_id": "r2", "subject": "alice", "decision": "allow"})
    event, data = await read_event(resp)
    assert event == "audit"
    assert orjson.loads(data) == {"request_id": "r2", "subject": "alice", "decision": "allow"}
    resp.close()
    while state.broadcaster.subscribers:  # the server notices the client left
        state.broadcaster.publish({"request_id": "r3", "subject": "alice"})
        await asyncio.sleep(0.01)


async def test_audit_stream_keepalive_and_drop_notice(make: MakeClient, state: State) -> None:
    state.broadcaster = AuditBroadcaster(queue_size=2)
    client = await make(sse_keepalive=0.05)
    resp = await client.get("/admin/audit/stream", headers=auth())
    await wait_for(lambda: state.broadcaster.subscribers > 0)
    first = await asyncio.wait_for(resp.content.readline(), 5)
    assert first.startswith(b":")
    for i in range(5):  # faster than the handler can forward: three are dropped
        state.broadcaster.publish({"request_id": f"r{i}"})
    # The client learns of the loss before the records that survived it.
    assert await read_event(resp) == ("dropped", "3")
    assert await read_event(resp) == ("audit", '{"request_id":"r0"}')
    assert await read_event(resp) == ("audit", '{"request_id":"r1"}')
    resp.close()


async def test_stream_subscriber_cap(make: MakeClient, state: State) -> None:
    state.broadcaster = AuditBroadcaster(max_subscribers=0)
    client = await make()
    resp = await client.get("/admin/audit/stream", headers=auth())
    assert resp.status == 503
