"""Every action on every JSON type: the table in docs/rules.md, pinned."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from gateway.jsoncodec import Number
from gateway.rules.actions import MARKER, hmac_sha256_hex, is_single_action, parse_action

KEY = b"k"


def act(raw: Any) -> Any:
    action, problems = parse_action(raw, KEY)
    assert not problems, problems
    assert action is not None
    return action


def h(text: str, length: int = 16) -> str:
    return "h:" + hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()[:length]


OBJ: dict[str, Any] = {"a": 1}
ARR: list[Any] = [1, 2]

# (action, value, result); drop and keep have no transform (the walker handles them).
TABLE = [
    # redact: any type, including null and structures
    ("redact", "13812345678", MARKER),
    ("redact", 5, MARKER),
    ("redact", Number("1.50"), MARKER),
    ("redact", True, MARKER),
    ("redact", None, MARKER),
    ("redact", OBJ, MARKER),
    ("redact", ARR, MARKER),
    # mask: strings and the text of numbers; null stays; bool and structures redacted
    ({"mask": "cn_phone"}, "13812345678", "138****5678"),
    ({"mask": "cn_phone"}, 13812345678, "138****5678"),
    ({"mask": "bank_card"}, Number("6222021234567890123"), "622202*********0123"),
    ({"mask": {"keep_first": 1}}, 1.5, "1**"),
    ({"mask": {"keep_first": 1}}, True, MARKER),
    ({"mask": {"keep_first": 1}}, None, None),
    ({"mask": {"keep_first": 1}}, OBJ, MARKER),
    ({"mask": {"keep_first": 1}}, ARR, MARKER),
    ({"mask": {"keep_first": 1}}, "", ""),
    # hash: strings, number text, booleans; null stays; structures redacted
    ("hash", "C1500080636", h("C1500080636")),
    ("hash", 123, h("123")),
    ("hash", Number("70511159906244696683"), h("70511159906244696683")),
    ("hash", True, h("true")),
    ("hash", None, None),
    ("hash", OBJ, MARKER),
    ({"hash": {"length": 8}}, "x", h("x", 8)),
    # round: numbers keep their type; numeric strings stay strings
    ({"round": 2}, Number("100.125"), Number("100.13")),
    ({"round": 2}, Number("100.10"), Number("100.10")),
    ({"round": 0}, Number("2.5"), Number("3")),
    ({"round": -3}, 123456, 123000),
    ({"round": -3}, Number("123456.78"), Number("123000")),
    ({"round": 1}, 2.25, 2.3),
    ({"round": 1}, 7, 7),
    ({"round": {"step": 10000}}, 125000, 120000),
    ({"round": {"step": 10000}}, Number("674649.00"), Number("670000")),
    ({"round": {"step": 10000}}, Number("-1.5"), Number("-10000")),
    ({"round": {"step": 10000}}, Number("1.2e5"), Number("120000")),
    ({"round": {"step": 0.5}}, Number("1.74"), Number("1.5")),
    ({"round": {"step": 0.5}}, 3, 3),
    ({"round": {"step": 0.25}}, 1, 1),
    ({"round": 2}, "12.345", "12.35"),
    ({"round": 2}, "twelve", MARKER),
    ({"round": 2}, True, MARKER),
    ({"round": 2}, None, None),
    ({"round": 2}, OBJ, MARKER),
    ({"round": 2}, Number("-0.001"), Number("0.00")),
    ("round", Number("99999999999999999999999.5"), Number("100000000000000000000000")),
]


@pytest.mark.parametrize(("raw", "value", "result"), TABLE)
def test_action_table(raw: Any, value: Any, result: Any) -> None:
    out = act(raw).transform(value)
    assert type(out) is type(result)
    assert out == result


def test_round_on_non_finite_floats_redacts() -> None:
    assert act({"round": 1}).transform(float("inf")) == MARKER
    assert act({"mask": {"keep_first": 1}}).transform(float("nan")) == MARKER


def test_keep_and_drop_have_no_transform() -> None:
    assert act("keep").transform is None
    assert act("drop").transform is None


def test_hash_is_hmac_sha256() -> None:
    for key in (b"", b"k", b"x" * 64, b"y" * 100):
        for msg in (b"", b"abc", "张三".encode()):
            assert hmac_sha256_hex(key)(msg) == hmac.new(key, msg, hashlib.sha256).hexdigest()


def test_action_texts() -> None:
    assert act({"mask": "cn_id"}).text == "mask cn_id"
    assert act({"mask": {"preset": "cn_id", "keep_last": 2}}).text == "mask cn_id keep_last=2"
    assert act({"mask": {"keep_first": 3, "keep_last": 4, "char": "#"}}).text == (
        "mask keep_first=3 keep_last=4 char='#'"
    )
    assert act("hash").text == "hash"
    assert act({"round": {"step": 1000}}).text == "round step=1000"


@pytest.mark.parametrize(
    ("raw", "where", "message"),
    [
        ("mask", (), "mask needs a preset"),
        ("shred", (), "unknown action 'shred'"),
        ({"mask": "cnid"}, ("mask",), "unknown preset 'cnid'"),
        ({"mask": {"preset": "cnid"}}, ("mask", "preset"), "unknown preset 'cnid'"),
        ({"mask": {"preset": "cn_name", "keep_first": 1}}, ("mask", "keep_first"), "does not take"),
        ({"mask": {"keep_first": -1}}, ("mask", "keep_first"), "integer from 0"),
        ({"mask": {"keep_first": 1, "char": "**"}}, ("mask", "char"), "single character"),
        ({"mask": {"keep": 1}}, ("mask", "keep"), "unknown key"),
        ({"mask": {}}, ("mask",), "needs a preset or keep_first"),
        ({"drop": True}, ("drop",), "takes no options"),
        ({"hash": {"length": 4}}, ("hash", "length"), "from 8 to 64"),
        ({"round": {"digits": 1, "step": 2}}, ("round",), "expected digits"),
        ({"round": {"step": 0}}, ("round", "step"), "positive"),
        ({"round": 1.5}, ("round",), "expected digits"),
        ({"mask": "cn_id", "hash": None}, (), "expected an action"),
        (["drop"], (), "expected an action"),
    ],
)
def test_parse_errors(raw: Any, where: tuple[str, ...], message: str) -> None:
    action, problems = parse_action(raw, KEY)
    assert action is None
    assert any(p == where and message in m for p, m in problems), problems


def test_hash_needs_a_key() -> None:
    action, problems = parse_action("hash", b"")
    assert action is None
    assert problems == [((), "hash needs a key, and the rule set was loaded without one")]


def test_single_action_or_map() -> None:
    assert is_single_action("drop")
    assert is_single_action({"mask": "cn_id"})
    assert not is_single_action({"confidential": "drop"})
    assert not is_single_action({"mask": "cn_id", "internal": "drop"})
