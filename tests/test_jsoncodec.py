"""Tests for gateway.jsoncodec: exactness, every rejection reason, fast path == reference.

``python -m tests.test_jsoncodec`` prints the speed figures quoted in the module docstring.
"""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import jsoncodec
from gateway.jsoncodec import (
    DEFAULT_MAX_DEPTH,
    MAX_SUPPORTED_DEPTH,
    JsonError,
    Number,
    _decode_reference,
    _encode_fallback,
    decode,
    encode,
)

# ---------------------------------------------------------------- helpers


def tagged(value: Any) -> Any:
    """A type-strict view of a document (``1 == 1.0 == True`` must not hide a wrong type)."""
    if type(value) is dict:
        return ("dict", [(k, tagged(v)) for k, v in value.items()])
    if type(value) is list:
        return ("list", [tagged(v) for v in value])
    if type(value) is Number:
        return ("Number", value.text)
    return (type(value).__name__, value)


def outcome(fn: Any, body: bytes, **kw: Any) -> Any:
    try:
        return ("ok", tagged(fn(body, **kw)))
    except JsonError as exc:
        return ("error", exc.reason)


def reason(body: bytes, **kw: Any) -> str:
    with pytest.raises(JsonError) as info:
        decode(body, **kw)
    assert outcome(_decode_reference, body, **kw) == ("error", info.value.reason)
    return info.value.reason


def customers(n: int = 2000, *, decimals: bool = False, seed: int = 1) -> bytes:
    """A realistic response: ~1.1 MB for 2000 records."""
    r = random.Random(seed)
    surnames, given_names = "张王李赵刘陈杨黄周吴", "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀英华"
    records = []
    for i in range(n):
        balance = r.randint(0, 10**9)
        records.append(
            {
                "id": 100000 + i,
                "customer_no": f"C{r.randint(10**9, 10**10 - 1)}",
                "name": r.choice(surnames) + r.choice(given_names) + r.choice(given_names),
                "id_number": f"1101011990{r.randint(10**7, 10**8 - 1)}",
                "phone": f"138{r.randint(10**7, 10**8 - 1)}",
                "email": f"user{i}.x@example.com",
                "address": f"北京市朝阳区建国路{r.randint(1, 999)}号院{r.randint(1, 30)}号楼",
                "bank_card": f"6222{r.randint(10**14, 10**15 - 1)}",
                "created_at": (
                    f"2023-0{r.randint(1, 9)}-1{r.randint(0, 9)}T10:2{r.randint(0, 9)}:00.123Z"
                ),
                "status": r.choice(["active", "frozen", "closed"]),
                "vip": r.random() < 0.2,
                "manager": None,
                "accounts": [
                    {
                        "number": f"6217{r.randint(10**14, 10**15 - 1)}",
                        "type": "savings",
                        "balance": f"{balance / 100:.2f}" if decimals else balance,
                        "currency": "CNY",
                    }
                    for _ in range(2)
                ],
                "risk_score": f"{r.random() * 100:.3f}" if decimals else r.randint(0, 100),
                "txn_password": "x" * 8,
            }
        )
    body = orjson.dumps({"code": 0, "message": "ok", "total": n, "data": records})
    if decimals:  # numbers as a Java BigDecimal would print them: "1234.50", not "1234.5"
        body = body.replace(b'"balance":"', b'"balance":').replace(b'","currency"', b',"currency"')
        body = body.replace(b'"risk_score":"', b'"risk_score":').replace(
            b'","txn_password"', b',"txn_password"'
        )
    return body


# ---------------------------------------------------------------- exactness


def test_the_contract_example_round_trips_byte_for_byte() -> None:
    body = '{"a":100.10,"b":12345678901234567890,"c":1e5,"d":-0,"e":"张三","f":[1.0,2]}'.encode()
    doc = decode(body)
    assert tagged(doc) == tagged(
        {
            "a": Number("100.10"),
            "b": Number("12345678901234567890"),
            "c": Number("1e5"),
            "d": Number("-0"),
            "e": "张三",
            "f": [Number("1.0"), 2],
        }
    )
    assert encode(doc) == body


def test_whitespace_is_dropped_and_values_kept() -> None:
    body = b' {\n\t"x" : [ 1.50 , -2E+3 , true , false , null ] ,\r\n "y" : "\\u00e9\\/" } \n'
    assert encode(decode(body)) == '{"x":[1.50,-2E+3,true,false,null],"y":"é/"}'.encode()


def test_key_order_is_kept() -> None:
    body = b'{"z":1,"a":2,"m":{"y":1,"b":2}}'
    assert list(decode(body)) == ["z", "a", "m"]
    assert encode(decode(body)) == body


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("-1", -1),
        ("9223372036854775807", 9223372036854775807),
        ("-9223372036854775808", -9223372036854775808),
        ("9223372036854775808", Number("9223372036854775808")),
        ("-9223372036854775809", Number("-9223372036854775809")),
        ("18446744073709551616", Number("18446744073709551616")),
        ("1" + "0" * 300, Number("1" + "0" * 300)),
        ("-0", Number("-0")),
        ("-0.0", Number("-0.0")),
        ("1.0", Number("1.0")),
        ("1e-400", Number("1e-400")),
        ("1.7976931348623157e308", Number("1.7976931348623157e308")),
        ("123456789012345678", 123456789012345678),
    ],
)
def test_numbers(text: str, expected: Any) -> None:
    for body in (text.encode(), f"[{text}]".encode(), f'{{"k": {text} }}'.encode()):
        doc = decode(body)
        value = doc if body[:1] not in b"[{" else (doc[0] if type(doc) is list else doc["k"])
        assert tagged(value) == tagged(expected)
        assert encode(doc) == body.replace(b" ", b"")


def test_top_level_scalars() -> None:
    assert decode(b'"x"') == "x"
    assert decode(b"true") is True
    assert decode(b" null ") is None
    assert decode(b"7") == 7


def test_unicode_comes_out_as_utf8_not_escapes() -> None:
    body = '{"名字":"张三 😀 \u2028"}'.encode()
    assert encode(decode(body)) == body
    assert decode(b'"\\ud83d\\ude00"') == "😀"  # an escaped surrogate pair is fine


def test_duplicate_keys_keep_the_last_value_and_never_emit_the_first() -> None:
    body = b'{"phone":"13812345678","id":1,"phone":"x"}'
    doc = decode(body)
    assert doc == {"phone": "x", "id": 1}
    doc["phone"] = "138****5678"  # what the masking engine does
    out = encode(doc)
    assert b"13812345678" not in out
    assert out == b'{"phone":"138****5678","id":1}'


def test_fast_path_skips_the_exact_scanner_for_integer_documents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise AssertionError("exact path used")

    monkeypatch.setattr(jsoncodec, "_parse_exact", boom)
    assert decode(customers(50))["total"] == 50


def test_orjson_nesting_bound_was_found() -> None:
    # If an orjson upgrade changes its bound, the fast path switches off: fail loudly.
    assert jsoncodec._ORJSON_DEPTH_LIMIT == 1024


# ---------------------------------------------------------------- rejections (every reason)


def test_empty() -> None:
    assert reason(b"") == "empty"
    assert reason(b" \r\n\t") == "empty"


def test_bom() -> None:
    assert reason(b'\xef\xbb\xbf{"a":1}') == "bom"


@pytest.mark.parametrize(
    "body",
    [
        b'"\xff"',  # never valid
        b'"\xc0\x80"',  # overlong NUL
        b'"\xed\xa0\x80"',  # an encoded surrogate
        b'"\xf4\x90\x80\x80"',  # above U+10FFFF
        b'"\xe5\xbc"',  # truncated sequence
        b"\xff\xfe{\x00}\x00",  # UTF-16 with its BOM
        '"caf\xe9"'.encode("latin-1"),
    ],
)
def test_not_utf8(body: bytes) -> None:
    assert reason(body) == "not_utf8"


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'{"a":1',
        b'{"a":1} x',
        b'{"a":1}{"b":2}',
        b"[1,]",
        b'{"a":1,}',
        b"[01]",
        b"[1.]",
        b"[.5]",
        b"[+1]",
        b"NaN",
        b"[Infinity]",
        b"[-Infinity]",
        b"{'a':1}",
        b'{"a":1 // comment\n}',
        b'"\\ud800"',  # lone high surrogate
        b'"\\udc00"',  # lone low surrogate
        b'"\\ud83d\\u0041"',  # high surrogate without its low half
        b'{"\\udfff":1}',  # in a key
        b'"tab\there"',  # raw control character
        b'"\\x41"',
        b"\x0c[1]",  # form feed is not JSON whitespace
        b"[1,\xc2\xa02]",  # nor is NBSP
        b"1],[2",  # would pass for two documents inside a wrapper
        b"]",
        b"][",
        b"[1e400]",  # overflows a double
        b"-1" + b"0" * 400,
        b"1" + b"0" * 5000 + b".5",
        b"tru",
        b"nul",
    ],
)
def test_invalid_json(body: bytes) -> None:
    assert reason(body) == "invalid_json"


def test_too_deep_at_the_boundary() -> None:
    ok = b"[" * DEFAULT_MAX_DEPTH + b"]" * DEFAULT_MAX_DEPTH
    assert encode(decode(ok)) == ok
    deep = b"[" * (DEFAULT_MAX_DEPTH + 1) + b"]" * (DEFAULT_MAX_DEPTH + 1)
    assert reason(deep) == "too_deep"
    obj = b'{"a":' * 10 + b"1" + b"}" * 10
    assert decode(obj, max_depth=10)
    assert reason(obj, max_depth=9) == "too_deep"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"[" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b"[1.5," * 100_000 + b"0" + b"]" * 100_000,
    ],
)
def test_100k_nesting_is_refused_without_crashing(body: bytes) -> None:
    assert reason(body) == "too_deep"


def test_deep_documents_with_decimals_take_the_exact_path() -> None:
    body = b"[1.5," * 300 + b"0" + b"]" * 300
    assert reason(body, max_depth=299) == "too_deep"
    assert encode(decode(body, max_depth=300)) == body


def test_max_depth_outside_the_supported_range_is_a_programming_error() -> None:
    for bad in (0, MAX_SUPPORTED_DEPTH + 1):
        with pytest.raises(ValueError, match="max_depth"):
            decode(b"1", max_depth=bad)
    body = b"[" * MAX_SUPPORTED_DEPTH + b"1.5" + b"]" * MAX_SUPPORTED_DEPTH
    assert encode(decode(body, max_depth=MAX_SUPPORTED_DEPTH)) == body


def test_error_messages_never_contain_the_body() -> None:
    secret = "110101199003074518"
    for body in (
        f'{{"id":"{secret}" x'.encode(),
        f'"{secret}\\ud800"'.encode(),
        f'{{"id":"{secret}"}}'.encode() + b"\xff",
        b"\xef\xbb\xbf" + secret.encode(),
    ):
        with pytest.raises(JsonError) as info:
            decode(body)
        assert secret not in str(info.value)
        assert secret[:6] not in repr(info.value.args)


# ---------------------------------------------------------------- encode


def test_encode_edits_the_masking_engine_makes() -> None:
    doc = decode(b'{"a":1.25,"b":[1,2],"c":"x","d":99999999999999999999}')
    doc["a"] = Number("1.3")
    doc["b"] = None
    doc["c"] = {"k": [True, False]}
    doc["d"] = 2**80  # an edit that leaves 64 bits behind
    doc["e"] = "****"
    assert encode(doc) == b'{"a":1.3,"b":null,"c":{"k":[true,false]},"d":%d,"e":"****"}' % 2**80


def test_encode_deeper_than_orjson_allows() -> None:
    n = MAX_SUPPORTED_DEPTH - 1  # plus the object: exactly the limit
    body = b"[" * n + b'{"a":1.10}' + b"]" * n
    assert encode(decode(body, max_depth=MAX_SUPPORTED_DEPTH)) == body
    doc: list[Any] = []
    for _ in range(50_000):  # far past any recursion limit: the fallback is iterative
        doc = [doc]
    assert encode(doc) == b"[" * 50_001 + b"]" * 50_001


@pytest.mark.parametrize(
    "doc",
    [
        {1: "x"},
        {"a": "\ud800"},
        ["\udfff"],
        Number(".5"),
        [Number("1,2")],
        {"a": Number('1,"ssn":"110101199003074518"')},
        [Number("1\n2")],
        [Number("NaN")],
        [Number("")],
        {"a": {1, 2}},
        b"bytes",
    ],
)
def test_encode_refuses_what_it_cannot_write_faithfully(doc: Any) -> None:
    with pytest.raises(JsonError) as info:
        encode(doc)
    assert info.value.reason == "unencodable"
    assert "110101199003074518" not in str(info.value)


def test_encode_refuses_cycles() -> None:
    doc: list[Any] = [1]
    doc.append(doc)
    with pytest.raises(JsonError, match="cycle"):
        encode(doc)


def test_encode_keeps_shared_subtrees() -> None:
    shared = {"x": Number("1.0")}
    deep: Any = shared
    for _ in range(300):
        deep = [deep, shared]
    assert encode(deep) == _encode_fallback(deep)
    assert json.loads(encode(deep))  # shared, not cyclic


# ---------------------------------------------------------------- hypothesis: fast == reference

_NUMBER = st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,6})?([eE][-+]?[0-9]{1,2})?\Z")
_KEYS = st.sampled_from(["a", "b", "phone", "余额", "id"]) | st.text(max_size=6)


def _expected_number(text: str) -> Any:
    if "." in text or "e" in text or "E" in text or text == "-0":
        return Number(text)
    v = int(text)
    return v if -(2**63) <= v < 2**63 else Number(text)


@st.composite
def json_docs(draw: st.DrawFn) -> tuple[bytes, Any]:
    """(body, expected document), rendered with random whitespace and escaping."""
    ws = draw(st.sampled_from(["", " ", "\n", "\t", " \r\n  "]))

    def string(s: str) -> str:
        return json.dumps(s, ensure_ascii=draw(st.booleans()))

    def node(depth: int) -> tuple[str, Any]:
        kind = draw(
            st.sampled_from(
                ["num", "str", "lit", "arr", "obj"] if depth < 4 else ["num", "str", "lit"]
            )
        )
        if kind == "num":
            text = draw(_NUMBER | st.sampled_from(["-0", "9223372036854775808", "100.10"]))
            return text, _expected_number(text)
        if kind == "str":
            s = draw(st.text(max_size=12))
            return string(s), s
        if kind == "lit":
            value = draw(st.sampled_from([True, False, None]))
            return json.dumps(value), value
        if kind == "arr":
            items = [node(depth + 1) for _ in range(draw(st.integers(0, 4)))]
            return "[" + ws + ("," + ws).join(t for t, _ in items) + ws + "]", [v for _, v in items]
        pairs = [(draw(_KEYS), node(depth + 1)) for _ in range(draw(st.integers(0, 4)))]
        text = (
            "{" + ws + ("," + ws).join(f"{string(k)}{ws}:{ws}{t}" for k, (t, _) in pairs) + ws + "}"
        )
        return text, dict((k, v) for k, (_, v) in pairs)  # duplicates: the last one wins

    text, expected = node(0)
    return (ws + text + ws).encode(), expected


_NASTY_BYTES = list(b'[]{},:"\\-.0e+ \x00\x80\xc3\xff\xef\xbb\xbfNa')
_settings = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(json_docs())
def test_fast_path_equals_reference_and_is_exact(case: tuple[bytes, Any]) -> None:
    body, expected = case
    assert outcome(decode, body) == ("ok", tagged(expected))
    assert outcome(_decode_reference, body) == ("ok", tagged(expected))
    out = encode(decode(body))
    assert out == _encode_fallback(decode(body))
    assert tagged(decode(out)) == tagged(expected)  # the encoded form decodes to the same values


@_settings
@given(json_docs(), st.data())
def test_damaged_documents_are_refused_alike(case: tuple[bytes, Any], data: st.DataObject) -> None:
    body = bytearray(case[0])
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(body)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(
            st.sampled_from(list(b'[]{},:"\\-.0e+ \x00\x80\xc3\xff\xef\xbb\xbfNa'))
            | st.integers(0, 255)
        )
        if op == "insert":
            body.insert(pos, byte)
        elif pos < len(body):
            if op == "delete":
                del body[pos]
            else:
                body[pos] = byte
    damaged = bytes(body)
    depth = data.draw(st.sampled_from([1, 2, 3, DEFAULT_MAX_DEPTH]))
    assert outcome(decode, damaged, max_depth=depth) == outcome(
        _decode_reference, damaged, max_depth=depth
    )


# ---------------------------------------------------------------- speed


def test_realistic_documents_round_trip() -> None:
    for decimals in (False, True):
        body = customers(200, decimals=decimals)
        assert encode(decode(body)) == body
        assert tagged(decode(body)) == tagged(_decode_reference(body))
    # The decimals keep trailing zeros, as BigDecimal prints them.
    assert re.search(rb'"balance":[0-9]+\.[0-9]0,', customers(decimals=True))


def _best_ms(fn: Any, runs: int = 50) -> float:
    fn()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    for label, body in (("ints only", customers()), ("with decimals", customers(decimals=True))):
        doc = decode(body)
        d = _best_ms(lambda body=body: decode(body))
        e = _best_ms(lambda doc=doc: encode(doc))
        print(f"{label:14s} {len(body) / 1e6:.2f} MB  decode {d:5.1f} ms  encode {e:4.1f} ms")


if __name__ == "__main__":
    main()
