"""The native element loop of a stream (``_fastmask.mask_elements``): streams split at
every offset equal the buffered path, and the C loop equals the per-element loop it
replaced (``value_end``/``step``/``mask`` per element) on every prefix and every damage,
counts and ids included."""

from __future__ import annotations

import itertools
import random
import types
from typing import Any

import orjson
import pytest

from gateway import _fastmask  # type: ignore[attr-defined]
from gateway.jsoncodec import Number
from gateway.rules import RuleSet, load_rules
from gateway.rules.bench import _response, customers
from gateway.rules.plan import Plan
from gateway.streaming import RecordStream, StreamError
from tests.test_streaming import LEVELS, SHIPPED, plan_for


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return load_rules(SHIPPED, hash_key=b"k")


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
