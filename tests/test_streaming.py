"""Record-by-record masking: the same bytes as the buffered path, bounded memory, and a
stream that fails after its first byte is cut mid-body, never completed."""

from __future__ import annotations

import asyncio
import itertools
import random
import types
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway import _fastmask  # type: ignore[attr-defined]
from gateway.config import Config
from gateway.jsoncodec import Number
from gateway.rules import RuleSet, load_rules, principal_from_claims
from gateway.rules.bench import _response, customers
from gateway.rules.plan import Plan
from gateway.runtime import compile_config
from gateway.server import Gateway
from gateway.streaming import NotStreamable, RecordStream, StreamError, records_key
from tests.conftest import UpstreamFactory

SHIPPED = Path(__file__).resolve().parents[1] / "rules"
PRODUCT = Path(__file__).parent / "data" / "product_rules"
LEVELS = ["public", "internal", "confidential", "secret"]


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return load_rules(SHIPPED, hash_key=b"k")


def plan_for(rs: RuleSet, level: str, policy: str = "customer") -> Plan:
    return rs.plan(policy, principal_from_claims({"clearance": level}, LEVELS))


def run(plan: Plan, body: bytes, seed: int = 0, max_value: int = 1 << 20) -> Any:
    assert plan.records is not None
    stream = RecordStream(plan, plan.records, max_value=max_value)
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(body):
        k = rng.randint(1, 64)
        out.append(stream.feed(body[i : i + k]))
        i += k
    out.append(stream.finish())
    return b"".join(out), stream.result()


BODIES = [
    _response(customers(25)),
    orjson.dumps({"page": 1, "data": [], "total": 0}),
    orjson.dumps({"data": [{"x": 1}, {"y": 2}], "extra": {"a": 1}}),
    orjson.dumps({"data": [1, "a", None, {"id": 3, "phone": "13812345678"}], "page": 2}),
    b' {\n "page" : 1 ,\n "data" : [ {"id": 1, "name": "\\u5f20\\u4e09"} , {"id":2} ] }\n',
    orjson.dumps({"data": {"id": 5, "name": "张三"}}),  # one record: an ordinary member
]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("body", BODIES)
def test_same_bytes_counts_and_records_as_the_buffered_path(
    shipped: RuleSet, level: str, body: bytes
) -> None:
    plan = plan_for(shipped, level)
    whole = plan.mask_bytes(body)
    assert whole is not None
    for seed in range(4):
        out, result = run(plan, body, seed)
        assert out == whole[0]
        assert result.fields == whole[1].fields
        assert result.records == whole[1].records


def test_an_emptied_allow_list_array_is_removed_as_when_buffered(shipped: RuleSet) -> None:
    plan = plan_for(shipped, "public")
    body = orjson.dumps({"data": [{"password": "x"}, {"pin": "1"}], "page": 1})
    whole = plan.mask_bytes(body)
    assert whole is not None and whole[0] == b'{"page":1}'
    assert run(plan, body)[0] == whole[0]


def test_records_key() -> None:
    rs = load_rules(PRODUCT, hash_key=b"k")
    assert records_key(rs.policies["customer"].records) == b"data"
    assert records_key(None) is False


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"data":[{"id":1}', "truncated"),
        (b'{"data":[{"id":1}]', "truncated"),
        (b'{"data":[{"id":1},{"id":}]}', "invalid_json"),
        (b'{"data":[{"id":1}]} x', "invalid_json"),
        (b'{"data":[{"id":1,"id":2}]}', "invalid_json"),  # the native pass declines it
        (b'{"page":1,"page":2,"data":[]}', "ambiguous_name"),
        (b'{"p\\u0061ge":1,"data":[]}', "ambiguous_name"),
        (b'{"data":[{"id":1}] "x":1}', "invalid_json"),
        (b'{"data":["\xff"]}', "invalid_json"),
        (b'{"p\xffge":1,"data":[]}', "invalid_json"),  # names go out as they came: checked
        (b'{"p\tge":1,"data":[]}', "invalid_json"),
        (b'{"p\xed\xa0\x80":1,"data":[]}', "invalid_json"),
    ],
)
def test_what_cannot_be_masked_stops_the_stream(shipped: RuleSet, body: bytes, reason: str) -> None:
    with pytest.raises(StreamError) as err:
        run(plan_for(shipped, "public"), body)
    assert err.value.reason == reason


def test_a_record_larger_than_the_cap_stops_the_stream(shipped: RuleSet) -> None:
    body = orjson.dumps({"data": [{"id": 1, "remarks": "x" * 5000}]})
    with pytest.raises(StreamError) as err:
        run(plan_for(shipped, "secret"), body, max_value=1000)
    assert err.value.reason == "too_large"


def test_a_body_of_another_shape_is_left_to_the_buffered_path(shipped: RuleSet) -> None:
    plan = plan_for(shipped, "public")
    assert plan.records is not None
    stream = RecordStream(plan, plan.records, max_value=1000)
    with pytest.raises(NotStreamable):
        stream.feed(b"[1,2,3]")
    assert not stream.started


# -- end to end ------------------------------------------------------------------------------
RECORD = {
    "id": 1,
    "phone": "13812345678",
    "password": "hunter2",
    "id_number": "11010519491231002X",
}
MASKED = {"id": 1, "id_number": "110105********002X"}


def array_body(n: int, tail: bytes = b"]}", ids: int = 0) -> list[bytes]:
    parts = [b'{"page":1,"data":[']
    for i in range(n):
        rid = i % ids + 1 if ids else i + 1
        parts.append((b"," if i else b"") + orjson.dumps({**RECORD, "id": rid}))
    parts.append(tail)
    return parts


@pytest.fixture
async def env(upstream_factory: UpstreamFactory, tmp_path: Path) -> Any:
    answers: dict[str, list[bytes]] = {}
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    (rules / "levels.yaml").write_text((PRODUCT / "levels.yaml").read_text("utf-8"), "utf-8")
    customer = (PRODUCT / "customer.yaml").read_text("utf-8")
    lines = [line for line in customer.splitlines() if "bulk-read" not in line]
    (rules / "customer.yaml").write_text(
        "\n".join(lines).replace("quotas:", "quotas: []") + "\n", "utf-8"
    )
    limited = [
        line
        if "bulk-read" not in line
        else "  - {name: bulk-read, per: client_ip, window: 1h, max_records: 1000}"
        for line in customer.splitlines()
    ]
    (rules / "limited.yaml").write_text(
        "\n".join(limited).replace("policy: customer", "policy: limited") + "\n", "utf-8"
    )

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i, part in enumerate(answers[request.path]):
            if i % 100 == 0:
                await asyncio.sleep(0.002)  # arrive in parts, as a real slow upstream does
            if part == b"<cut>":
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write(part)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    url = await upstream_factory(app)
    config = Config.model_validate(
        {
            "listen": "127.0.0.1:0",
            "upstreams": {"app": {"url": url, "timeout": 5}},
            "routes": [
                {
                    "name": "l",
                    "path": "/limited/**",
                    "upstream": "app",
                    "auth": "none",
                    "policy": "limited",
                },
                {
                    "name": "c",
                    "path": "/**",
                    "upstream": "app",
                    "auth": "none",
                    "policy": "customer",
                },
            ],
            "rules": str(rules),
            "limits": {"max_response_body": 16 * 1024, "stream_after": 4 * 1024},
        }
    )
    gateway = Gateway(config, compile_config(config, env={"GATEWAY_HASH_KEY": "k" * 32}))
    await gateway.start()
    host, port = gateway.addresses[0]
    async with aiohttp.ClientSession() as session:
        yield answers, f"http://{host}:{port}", session
    await gateway.stop()


async def test_a_body_far_over_the_cap_streams_masked(env: Any) -> None:
    answers, gw, s = env
    answers["/big"] = array_body(3000)  # ~300 KB, the buffered cap is 16 KB
    async with s.get(gw + "/big") as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        assert "X-Request-ID" in resp.headers
        doc = orjson.loads(await resp.read())
    assert doc["page"] == 1
    assert len(doc["data"]) == 3000
    assert doc["data"][0] == MASKED
    assert doc["data"][2999] == {**MASKED, "id": 3000}


async def test_a_small_body_still_takes_the_buffered_path(env: Any) -> None:
    answers, gw, s = env
    answers["/small"] = array_body(2)
    async with s.get(gw + "/small") as resp:
        assert resp.status == 200
        assert "Content-Length" in resp.headers
        assert orjson.loads(await resp.read())["data"][1] == {**MASKED, "id": 2}


@pytest.mark.parametrize("tail", [b',{"id":', b',{"id":1,"phone":"13812345678"}] x', b"<cut>"])
async def test_a_bad_tail_aborts_the_connection_mid_body(env: Any, tail: bytes) -> None:
    answers, gw, s = env
    answers["/bad"] = [*array_body(3000, tail=b"")[:-1], tail]
    async with s.get(gw + "/bad") as resp:
        assert resp.status == 200  # the head went out before the tail arrived
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_a_stream_is_cut_where_a_quota_would_be_exceeded(env: Any) -> None:
    answers, gw, s = env
    answers["/limited/x"] = array_body(3000)
    received = b""
    async with s.get(gw + "/limited/x") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                received += chunk
    assert 0 < received.count(b'"id":') <= 1000  # never more records than the quota allows
    async with s.get(gw + "/limited/x") as again:  # the caller is now at the limit
        assert again.status == 429


async def test_a_bad_head_is_the_usual_502(env: Any) -> None:
    answers, gw, s = env
    answers["/head"] = [b'{"data":[{"id":1,"id":2}' + b" " * 5000, b"]}"]
    async with s.get(gw + "/head") as resp:
        assert resp.status == 502
        body = await resp.read()
    assert b"13812345678" not in body


async def test_streaming_keeps_memory_bounded(env: Any) -> None:
    """The gateway holds one record at a time, not the body: a body 30x the buffered
    cap goes through while the process's traced allocations stay small."""
    import tracemalloc

    answers, gw, s = env
    answers["/huge"] = array_body(30000, ids=50)  # few distinct ids: the audit keeps those
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        async with s.get(gw + "/huge") as resp:
            size = 0
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                await asyncio.sleep(0)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    sent = sum(len(p) for p in answers["/huge"])
    assert sent > 2_500_000 and size > 1_200_000
    # Upstream, gateway and client share this process; what they hold together is
    # their socket buffers (a few 64 KiB each), never the body.
    assert peak < sent / 2, (peak, sent)


# -- the native element loop (_fastmask.mask_elements) ---------------------------------------
INDEXED = """\
policy: p
unlisted: keep
fields:
  - {name: first, paths: ["$.data[0].phone", "$[0].phone"], level: secret, action: redact}
  - {name: third, paths: ["$.data[2]", "$[2]"], level: secret, action: drop}
  - {name: phone, paths: ["$..phone"], level: secret, action: {mask: {keep_first: 3, keep_last: 4}}}
  - {name: secret, paths: ["$..password"], level: never, action: drop}
records: {path: "$.data[*]", id: id}
"""


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    """Rules that depend on an element's index, with `$.K[*]` and `$[*]` records."""
    d = tmp_path_factory.mktemp("indexed")
    (d / "levels.yaml").write_text("levels: [public, internal, confidential, secret]\n")
    (d / "p.yaml").write_text(INDEXED)
    top = INDEXED.replace("policy: p", "policy: top").replace("$.data[*]", "$[*]")
    (d / "top.yaml").write_text(top)
    return load_rules(d, hash_key=b"k")


ELEMENTS = [
    b"",
    b" ",
    b'{"id":1,"phone":"13812345678"}',
    b'{"id":1,"phone":"13812345678","password":"x"},{"id":"a\\u00e9"},5,"s",null,true,'
    b'{"id":2,"n":{"phone":"13900001111"}},[1,{"id":9}],-1.5e3,{"id":3.0}',
    b' {"id" : 1 } ,\n\t{"id":2}\r\n, 3 , "x" , null , false , -12 , [ ] , { } ',
    b'{"password":"x"},{"pin":"1"},{"id":7,"phone":"13812345678"},{"zzz":1},8,{"id":7}',
    b"1,22,333,4444",
]


def envelope(elements: bytes, top: bool = False) -> bytes:
    if top:
        return b"[" + elements + b"]"
    return b'{"page":1,"data":[' + elements + b'],"total":2}'


def streamed(plan: Plan, parts: list[bytes]) -> tuple[bytes, Any, int, list[str]]:
    assert plan.records is not None
    stream = RecordStream(plan, plan.records, max_value=1 << 20)
    out, n, ids = [], 0, []
    for part in parts:
        out.append(stream.feed(part))
        got = stream.take_records()
        n, ids = n + got[0], ids + got[1]
    out.append(stream.finish())
    got = stream.take_records()
    return b"".join(out), stream.result(), n + got[0], ids + got[1]


def stream_cases(shipped: RuleSet, indexed: RuleSet) -> list[tuple[Plan, bytes]]:
    cases = []
    for elements in ELEMENTS:
        for level in LEVELS:
            cases.append((plan_for(shipped, level), envelope(elements)))
            cases.append((plan_for(indexed, level, "p"), envelope(elements)))
            cases.append((plan_for(indexed, level, "top"), envelope(elements, top=True)))
    return cases


def test_elements_split_at_every_offset_match_the_buffered_path(
    shipped: RuleSet, indexed: RuleSet
) -> None:
    for plan, body in stream_cases(shipped, indexed):
        whole = plan.mask_bytes(body)
        assert whole is not None, body
        expect = (whole[0], whole[1].fields, whole[1].records)
        for k in range(len(body) + 1):
            out, result, n, ids = streamed(plan, [body[:k], body[k:]])
            assert (out, result.fields, result.records) == expect, (body, k)
            assert n == whole[1].records.count
            assert tuple(ids) == whole[1].records.ids  # each distinct id once, in order
        out, result, n, ids = streamed(plan, [body[i : i + 1] for i in range(len(body))])
        assert (out, result.fields, result.records) == expect, body


def test_dropped_elements_under_an_allow_list(shipped: RuleSet) -> None:
    plan = plan_for(shipped, "public")
    body = envelope(b'{"password":"x"},7,{"id":1,"phone":"1"},{"pin":"2"},{"id":2}')
    whole = plan.mask_bytes(body)
    assert whole is not None
    assert whole[0] == b'{"page":1,"data":[{"id":1},{"id":2}],"total":2}'
    for k in range(len(body) + 1):
        assert streamed(plan, [body[:k], body[k:]])[0] == whole[0]
    emptied = envelope(b'{"password":"x"} , 7')
    whole = plan.mask_bytes(emptied)
    assert whole is not None and whole[0] == b'{"page":1,"total":2}'
    for k in range(len(emptied) + 1):
        assert streamed(plan, [emptied[:k], emptied[k:]])[0] == whole[0]


def test_ids_past_the_cap_still_reach_the_quota(
    shipped: RuleSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.streaming as streaming

    monkeypatch.setattr(streaming, "ID_CAP", 3)
    plan = plan_for(shipped, "secret")
    body = envelope(b",".join(b'{"id":%d}' % (i % 7) for i in range(40)))
    _, result, n, ids = streamed(plan, [body[:50], body[50:]])
    assert n == 40 and result.records.count == 40
    assert result.records.ids == ("0", "1", "2")
    # ids past the cap are not remembered: each occurrence goes to the quota accounting
    assert ids == ["0", "1", "2", *[str(i % 7) for i in range(40) if i % 7 >= 3]]


def reference_elements(
    prog: Any,
    rec: Any,
    id_key: bytes,
    buf: bytes | bytearray,
    pos: int,
    final: bool,
    number: type,
    arr: int,
    rarr: int,
    allow: bool,
    depth: int,
    index: int,
    kept: int,
    where: int,
) -> Any:
    """mask_elements as RecordStream's loop did it before: value_end, step and mask per
    element, ',' and ']' read here. After a failure pos, index, kept, where are None."""
    fm = _fastmask
    slots = len(fm.mask(prog, None, None, b"0", 1, number, -1, -1, False)[1])
    out, counts, records, ids = [], [0] * slots, 0, []
    failed = (b"", None, None, None, None)
    while True:
        while pos < len(buf) and buf[pos] in b" \t\r\n":
            pos += 1
        if pos >= len(buf):
            break
        if where == 2:
            if buf[pos] not in b",]":
                return (*failed, counts, records, ids, 1)
            pos, where = pos + 1, 1 if buf[pos] == ord(",") else 3
            if where == 3:
                break
            continue
        if where == 0 and buf[pos] == ord("]"):
            pos, where = pos + 1, 3
            break
        end = fm.value_end(buf, pos, final)
        if end == -2:
            return (*failed, counts, records, ids, 1)
        if end == -1:
            break
        ms, rs = fm.step(prog, arr, index), fm.step(rec, rarr, index)
        got = fm.mask(prog, rec, id_key, bytes(buf[pos:end]), depth, number, ms, rs, allow)
        if got is None:
            return (*failed, counts, records, ids, 1)
        masked, c, n, i, dropped = got
        counts = [a + b for a, b in zip(counts, c, strict=True)]
        records += n
        ids += i
        if not dropped:
            out.append(b"," + masked if kept else masked)
            kept += 1
        index, pos, where = index + 1, end, 2
    return (b"".join(out), pos, index, kept, where, counts, records, ids, 0)


def native_elements(*args: Any) -> Any:
    """mask_elements, with pos, index, kept and where None after a failure (as above)."""
    got = _fastmask.mask_elements(*args)
    if got[-1]:
        return (got[0], None, None, None, None, *got[5:])
    return got


def element_args(stream: RecordStream, buf: bytes, pos: int, final: bool) -> list[Any]:
    return [
        stream._prog,
        stream._rec,
        stream._id_key,
        buf,
        pos,
        final,
        Number,
        stream._arr,
        stream._rarr,
        stream._el_allow,
        stream._el_depth,
        0,
        0,
        0,
    ]


def test_mask_elements_is_the_per_element_loop_on_every_prefix(
    shipped: RuleSet, indexed: RuleSet
) -> None:
    for plan, body in stream_cases(shipped, indexed):
        assert plan.records is not None
        stream = RecordStream(plan, plan.records, max_value=1 << 20)
        start = body.index(b"[") + 1
        for end in range(start, len(body) + 1):
            for final in (False, True):
                args = element_args(stream, body[:end], start, final)
                assert native_elements(*args) == reference_elements(*args), (body, end)
        # resuming mid-array: after an element, after a ',', at a later index
        for where in (0, 1, 2):
            for index, kept in ((0, 0), (1, 0), (2, 1), (5, 3)):
                for pos in range(start, len(body)):
                    args = element_args(stream, body, pos, False)
                    args[-3:] = [index, kept, where]
                    assert native_elements(*args) == reference_elements(*args), (body, pos)


def test_mask_elements_in_one_pass_cut_at_every_byte(shipped: RuleSet) -> None:
    """After the first element of a call, an element is masked in one pass over the rest
    of the buffer, its end where the parse stops. Cut at any byte it must answer as the
    per-element loop: nothing of it out, and pos left at its start (not final: more is
    needed; final: the stream stops there as truncated); complete, the same bytes."""
    recs = orjson.loads(_response(customers(3)))["data"]
    first = orjson.dumps(recs[0])
    rest = b",".join(orjson.dumps(r) for r in recs[1:])
    odd = b' "s\\u00e9\\"" , ' + b"[" * 300 + b"]" * 300  # deeper than the limit: fails
    odd_ok = b', [[{"id":"x\\"y","phone":"13812345678"}],"\\\\"] , {"id":7,"n":{}}'
    for level in LEVELS:
        plan = plan_for(shipped, level)
        assert plan.records is not None
        stream = RecordStream(plan, plan.records, max_value=1 << 20)
        for elements in (first + b"," + rest + odd_ok, first + odd_ok + b"," + odd):
            body = envelope(elements)
            start = body.index(b"[") + 1
            whole = native_elements(*element_args(stream, body[: start + len(first)], start, 0))
            assert whole[:5] == (whole[0], start + len(first), 1, whole[3], 2)
            for end in range(start + len(first), len(body) + 1):
                for final in (False, True):
                    args = element_args(stream, body[:end], start, final)
                    got = native_elements(*args)
                    assert got == reference_elements(*args), (level, end, final)
                    if not got[-1] and got[4] != 3:
                        # stopped after the last complete element or ',', before what is
                        # not complete yet, and none of that went out
                        tail = body[got[1] : end]
                        assert tail.strip() == b"" or _fastmask.value_end(tail, 0, final) == -1
                        before = element_args(stream, body[: got[1]], start, False)
                        assert got[0] == native_elements(*before)[0]
        # every complete element of the realistic records went out in one pass
        body = envelope(first + b"," + rest)
        args = element_args(stream, body, body.index(b"[") + 1, False)
        assert native_elements(*args) == reference_elements(*args)
        assert native_elements(*args)[2] == 3


MUTATIONS = [b"", b"}", b"]", b",", b'"', b" ", b"x", b"1", b"\\", b"{", b"[", b"\xff", b"\x01"]


def test_mask_elements_fails_as_the_per_element_loop_at_every_position(
    shipped: RuleSet, indexed: RuleSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken element or separator anywhere: the same answer as element by element
    (nothing out, the counts of the elements before it only), and a stream stops exactly
    where it stopped before, with the same bytes sent."""
    import gateway.streaming as streaming

    per_element = types.SimpleNamespace(**vars(_fastmask))
    per_element.mask_elements = reference_elements
    rng = random.Random(5)
    for plan, body in stream_cases(shipped, indexed)[::4]:  # every kind, some levels
        assert plan.records is not None
        stream = RecordStream(plan, plan.records, max_value=1 << 20)
        start = body.index(b"[") + 1
        for p in range(start, body.rindex(b"]") + 1):
            for m in MUTATIONS:
                bad = body[:p] + m + body[p + 1 :]
                for final in (False, True):
                    args = element_args(stream, bad, start, final)
                    assert native_elements(*args) == reference_elements(*args), (bad, final)
                whole = plan.mask_bytes(bad)
                cuts = [0, *sorted((p, p + 1, rng.randrange(len(bad) + 1))), len(bad)]
                three = [bad[x:y] for x, y in itertools.pairwise(cuts)]
                for parts in ([bad[:p], bad[p:]], three):
                    got = stream_outcome(plan, parts)
                    with monkeypatch.context() as mp:
                        mp.setattr(streaming, "_fastmask", per_element)
                        assert got == stream_outcome(plan, parts), (bad, p)
                    if got[1] is None:
                        assert whole is not None and b"".join(got[0]) == whole[0]
                    else:
                        assert whole is None, bad


def stream_outcome(plan: Plan, parts: list[bytes]) -> Any:
    """Bytes and records sent feed by feed, the error that stopped it, the fields."""
    assert plan.records is not None
    stream = RecordStream(plan, plan.records, max_value=1 << 20)
    sent: list[Any] = []
    error = None
    try:
        for part in parts:
            sent += [stream.feed(part), stream.take_records()]
        sent += [stream.finish(), stream.take_records()]
    except StreamError as exc:
        error = exc.reason
    result = stream.result()
    return sent[::2], error, sent[1::2], result.fields, result.records


def test_mask_elements_rejects_bad_arguments(indexed: RuleSet) -> None:
    plan = plan_for(indexed, "secret", "p")
    assert plan.records is not None
    stream = RecordStream(plan, plan.records, max_value=1 << 20)
    args = element_args(stream, b"[1]", 1, False)
    assert _fastmask.mask_elements(*args)[:5] == (b"1", 3, 1, 1, 3)
    for k, bad in ((4, 4), (4, -1), (7, 10**6), (8, 10**6), (11, -1), (12, -1), (13, 3)):
        with pytest.raises(ValueError):
            _fastmask.mask_elements(*args[:k], bad, *args[k + 1 :])
    with pytest.raises(TypeError):
        _fastmask.mask_elements(*args[:2], None, *args[3:])
