"""The native pass answers exactly as the reference pipeline, or declines.

The reference is ``encode(plan.apply(decode(body)))``: its bytes, field counts
and records. Whenever :meth:`Plan.mask_bytes` answers, all three must be equal;
whenever the reference rejects a body, the native pass must decline (None).
"""

from __future__ import annotations

import hmac
import random
from hashlib import sha256
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import _fastmask  # type: ignore[attr-defined]
from gateway.jsoncodec import JsonError, decode, encode
from gateway.rules import RuleSet, load_rules, principal_from_claims
from gateway.rules.bench import _response, customers
from gateway.rules.native import _pads
from gateway.rules.plan import Plan
from gateway.rules.presets import PRESETS

from .conftest import KEY, LEVELS, RuleDir, policy_yaml, ruleset_of
from .strategies import ACTIONS as BASE_ACTIONS
from .strategies import documents, policies

LEVEL_NAMES = ["public", "internal", "confidential", "secret"]
SHIPPED = Path(__file__).resolve().parents[2] / "rules"


def reference(plan: Plan, body: bytes) -> tuple[bytes, Any, Any] | None:
    try:
        result = plan.apply(decode(body))
    except JsonError:
        return None
    return encode(result.document), result.fields, result.records


def agree(plan: Plan, body: bytes, *, must_answer: bool = False) -> bytes | None:
    """Assert the native answer (if any) equals the reference; return the native bytes."""
    native = plan.mask_bytes(body)
    ref = reference(plan, body)
    if ref is None:
        assert native is None, "the native pass accepted a body the reference rejects"
        return None
    if native is None:
        assert not must_answer, "the native pass declined"
        return None
    out, result = native
    assert out == ref[0]
    assert result.fields == ref[1]
    assert result.records == ref[2]
    return out


def plan_of(rs: RuleSet, level: str, policy: str = "p", **claims: Any) -> Plan:
    return rs.plan(policy, principal_from_claims({"clearance": level, **claims}, LEVEL_NAMES))


# -- the shipped rule pack ----------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return load_rules(SHIPPED, hash_key=KEY)


@pytest.mark.parametrize("level", LEVEL_NAMES)
@pytest.mark.parametrize("department", [None, "risk"])
def test_shipped_pack_on_demo_customers(shipped: RuleSet, level: str, department: str) -> None:
    claims = {"department": department} if department else {}
    plan = plan_of(shipped, level, "customer", **claims)
    assert plan.native is not None
    for body in (_response(customers(50)), _response(customers(1, seed=3))[:-1] + b"}"):
        agree(plan, body, must_answer=True)
    single = orjson.dumps({"data": _plain_first()})
    agree(plan, single, must_answer=True)


def _plain_first() -> Any:
    return orjson.loads(_response(customers(1)))["data"][0]


def test_records_and_ids_come_from_the_body_as_sent(shipped: RuleSet) -> None:
    body = orjson.dumps({"data": [{"id": 7}, {"id": "c-8"}, {"id": 7}, {"id": None}, 5]})
    got = plan_of(shipped, "public", "customer").mask_bytes(body)
    assert got is not None
    assert got[1].records.count == 4
    assert got[1].records.ids == ("7", "c-8")


@pytest.mark.parametrize("level", LEVEL_NAMES)
def test_ids_of_every_kind_of_token(shipped: RuleSet, level: str) -> None:
    """The id is read from the token the masking pass just parsed (not scanned again)."""
    ids = [b"7", b"-7", b"1.5e3", b"0", b'"c-8"', b'""', b'"a\\u00e9\\n"', b'"\\"q\\""']
    ids += [b'"\\\\"', '"张三"'.encode(), b"true", b"false", b"null", b'{"x":1}', b"[1]"]
    records = [b'{"id":%s,"phone":"13812345678"}' % v for v in ids]
    records += [b'{ "phone" : 1 , "id" : %s }' % v for v in ids]
    body = b'{"data":[' + b",".join(records) + b"]}"
    plan = plan_of(shipped, level, "customer")
    out = agree(plan, body, must_answer=True)
    assert out is not None


# -- exactness -----------------------------------------------------------------------------
REDACT_B = policy_yaml('  - {name: b, paths: ["$..b"], level: secret, action: redact}\n')


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 100.10, "n": 12345678901234567890123, "z": -0, "e": 1E+2, "s": "\\u00e9\\/\\n"}',
        b'{\n  "a" : [ 1 , 2 ] ,\n  "b" : "x"\n}\n',
        b'[{"b":"\\ud83d\\ude00"},{"b":{"c":1}},{"b":[1]},{"b":null},{"b":true}]',
        '{"名字":"张三","b":"北京"}'.encode(),
        b'{"a":"\\u0000\\u001f\\"\\\\"}',
        b'{"a":1e-400,"b":-12.5e3}',
    ],
)
def test_values_come_through_exactly(rule_dir: RuleDir, body: bytes) -> None:
    plan = plan_of(ruleset_of(rule_dir({"p.yaml": REDACT_B})), "public")
    agree(plan, body, must_answer=True)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"\xef\xbb\xbf{}",
        b'"top-level scalar"',
        b"12",
        b'{"a":1,"a":2}',  # duplicate names: the reference's last-wins rule decides
        b'{"\\u0061":1,"a":2}',  # an escaped name
        b'{"a":"\\ud800"}',  # lone surrogate
        b'{"a":1e400}',  # overflows a double
        b'{"a":"\xff"}',
        b'{"a":"\xed\xa0\x80"}',  # an encoded surrogate
        b'{"a":"\xc0\xaf"}',  # overlong
        b'{"a":1,}',
        b'{"a":01}',
        b'{"a":NaN}',
        b'{"a":"x"} x',
        b'{"a":"\t"}',
        b"[" * 300 + b"]" * 300,
        b'{"a":[1,2]',
    ],
)
def test_declines_what_it_cannot_answer_for(rule_dir: RuleDir, body: bytes) -> None:
    plan = plan_of(ruleset_of(rule_dir({"p.yaml": REDACT_B})), "public")
    assert plan.mask_bytes(body) is None
    agree(plan, body)


def test_declines_plans_that_need_the_evaluator(rule_dir: RuleDir) -> None:
    fields = (
        '  - {name: f, paths: ["$..[?@.a]"], level: secret, action: drop}\n'
        '  - {name: g, paths: ["$.x[-1]"], level: secret, action: drop}\n'
    )
    rs = ruleset_of(rule_dir({"p.yaml": policy_yaml(fields)}))
    plan = plan_of(rs, "public")
    assert plan.native is None
    assert plan.mask_bytes(b'{"x":[1]}') is None


def test_hash_is_hmac_sha256() -> None:
    key = b"k" * 70  # longer than a block: hashed first, as RFC 2104 says
    inner, outer = _pads(key)
    lengths = (0, 1, 31, 32, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 200)
    for msg in (b"", b"a", "张三".encode(), *(bytes(range(n)) for n in lengths), b"y" * 200):
        expected = hmac.new(key, msg, sha256).hexdigest()
        assert _fastmask.hmac_hex(inner, outer, msg) == expected  # SHA extensions when present
        assert _fastmask.hmac_hex(inner, outer, msg, True) == expected  # portable C


def test_hash_of_every_length(tmp_path_factory: Any) -> None:
    """The hash action's digits, 8 to 64 of them, for values around the block sizes."""
    d = tmp_path_factory.mktemp("rules")
    rules = "".join(
        f'  - {{name: h{k}, paths: ["$.h{k}"], level: secret, action: {{hash: {{length: {k}}}}}}}\n'
        for k in range(8, 65)
    )
    (d / "levels.yaml").write_text(LEVELS, encoding="utf-8")
    (d / "p.yaml").write_text(policy_yaml(rules), encoding="utf-8")
    plan = plan_of(load_rules(d, hash_key=KEY), "public")
    for n in (0, 1, 54, 55, 56, 57, 63, 64, 65, 118, 119, 120, 200):
        for value in ("é" * (n // 2) + "x" * (n % 2), n, True, None):
            doc = {f"h{k}": value for k in range(8, 65)}
            agree(plan, orjson.dumps(doc), must_answer=True)


# -- presets, native against the Python functions ----------------------------------------------
PRESET_TEXTS = [
    "",
    "a",
    "张三",
    "欧阳娜娜",
    "欧阳",
    "司马 相如",
    "John Smith",
    "Jean-Luc.Picard",
    "广东省深圳市南山区科技园路1号",
    "北京市朝阳区建国路 88 号",
    "新疆维吾尔自治区乌鲁木齐市天山区",
    "上海市浦东新区张江镇",
    "浙江省杭州市西湖区文三路阳光小区3幢",
    "内蒙古自治区呼伦贝尔市鄂温克族自治旗",
    "广东省\u3000深圳市",
    "广东省深圳市٣区",
    "110101199003071234",
    "11010119900307123",
    "110101900307123",
    "6222 0212 3456 7890 123",
    "+86 138 1234 5678",
    "0086-13812345678",
    "+8613812345678",
    "z.s@example.com",
    "a@b@c",
    "no-at-sign",
    "𠀀𠀁𠀂",
]

PRESET_POLICY = "".join(
    f'  - {{name: {name}, paths: ["$.{name}"], level: secret, action: {{mask: {name}}}}}\n'
    for name in PRESETS
) + (
    '  - {name: ends, paths: ["$.ends"], level: secret, action: {mask: {keep_first: 2, keep_last: 1, char: "#"}}}\n'  # noqa: E501
    '  - {name: step, paths: ["$.step"], level: secret, action: {round: {step: 100}}}\n'
    '  - {name: hashed, paths: ["$.hashed"], level: secret, action: {hash: {length: 20}}}\n'
)
FIELD_NAMES = [*PRESETS, "ends", "step", "hashed"]


@pytest.fixture(scope="module")
def preset_plan(tmp_path_factory: Any) -> Plan:
    d = tmp_path_factory.mktemp("rules")
    (d / "levels.yaml").write_text(LEVELS, encoding="utf-8")
    (d / "p.yaml").write_text(policy_yaml(PRESET_POLICY), encoding="utf-8")
    return plan_of(load_rules(d, hash_key=KEY), "public")


@pytest.mark.parametrize("text", PRESET_TEXTS)
def test_presets_match_the_reference(preset_plan: Plan, text: str) -> None:
    body = orjson.dumps({name: text for name in FIELD_NAMES})
    agree(preset_plan, body, must_answer=True)


def test_names_and_addresses_past_the_inline_buffer(preset_plan: Plan) -> None:
    """cn_name and address decode short text into buffers of their own and longer text
    (more than 96 bytes) into the heap: the same masks on both sides of the boundary."""
    for k in [*range(55, 80), 200, 1000]:
        for text in (
            "广东省深圳市南山区" + "a" * k,  # 27 bytes of province, city, district
            "广东省深圳市南山区" + "科技园路" * (k // 12) + "1" * (k % 12),
            "新疆维吾尔自治区乌鲁木齐市天山区" + "中" * (k // 3) + "x" * (k % 3),
            "欧阳" + "a" * (k + 30),
            "张" * (k // 3) + "é" * (k % 3),
            "Jean-Luc " * (k // 9) + "z" * (k % 9),
            "𠀀" * (k // 4) + "a" * (k % 4),
        ):
            agree(preset_plan, orjson.dumps({"address": text, "cn_name": text}), must_answer=True)


def test_address_units_for_every_kind_of_character(preset_plan: Plan) -> None:
    """The address mask's table of characters that are not part of a unit's name (built
    from Python's Unicode database at import): every whitespace and decimal character,
    the street-level characters, their neighbours, and characters beyond the BMP."""
    special = [c for c in range(0x30000) if chr(c).isspace() or chr(c).isdecimal()]
    street = [
        ord(c)
        for c in "省市区县旗镇乡村路街道巷号弄栋楼室单元幢座层#,，0123456789０１２３４５６７８９"
    ]
    chars = sorted({*special, *street, *(c + 1 for c in special), *(c - 1 for c in street)})
    chars += [0x7F, 0x80, 0xFFFF, 0x10000, 0x20000, 0x2A6D6, 0x10FFFF]
    for c in chars:
        if 0xD800 <= c <= 0xDFFF:
            continue
        x = chr(c)
        for text in (
            x + x + "省" + x + "市" + x + "区路",
            "广东" + x + "省深" + x + "市南山区",
            x * 9 + "市",
        ):
            agree(preset_plan, orjson.dumps({"address": text}), must_answer=True)


@pytest.mark.parametrize(
    "value",
    [0, 7, -7, 12345, -12345, 2**62, -(2**63), 2**63 - 1, 2**64, True, False, None, [1], {}],
)
def test_every_json_type_under_every_action(preset_plan: Plan, value: Any) -> None:
    body = encode({name: value for name in FIELD_NAMES})
    agree(preset_plan, body, must_answer=True)


@pytest.mark.parametrize("text", ["1234.56", "0.5", "-12.5", "99999999999999999999.1", "1e5"])
def test_round_step_on_decimals(preset_plan: Plan, text: str) -> None:
    agree(preset_plan, b'{"step":' + text.encode() + b"}", must_answer=True)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=12))
def test_presets_on_any_text(preset_plan: Plan, text: str) -> None:
    body = orjson.dumps({name: text for name in FIELD_NAMES})
    agree(preset_plan, body, must_answer=True)


# -- random policies, documents and damage ----------------------------------------------------
# the walker's actions, and the masks and rounding the native pass does itself
ACTIONS = [*BASE_ACTIONS, "{mask: address}", "{mask: cn_name}", "{round: {step: 10}}"]


def native_policies() -> st.SearchStrategy[str]:
    return policies(
        actions=ACTIONS, general=False, records=("$.data[*]", "$.*", "$[*].a", "$.data")
    )


def _ruleset(tmp_path_factory: Any, policy: str) -> RuleSet:
    d: Path = tmp_path_factory.mktemp("rules")
    (d / "levels.yaml").write_text(LEVELS, encoding="utf-8")
    (d / "p.yaml").write_text(policy, encoding="utf-8")
    return load_rules(d, hash_key=KEY)


def _body(doc: Any, pretty: bool) -> bytes:
    return encode(doc) if not pretty else orjson.dumps(orjson.loads(encode(doc)), option=2)


_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(
    policy=native_policies(),
    doc=documents(),
    level=st.sampled_from(LEVEL_NAMES),
    pretty=st.booleans(),
)
def test_random_policies_and_documents(
    tmp_path_factory: Any, policy: str, doc: Any, level: str, pretty: bool
) -> None:
    plan = plan_of(_ruleset(tmp_path_factory, policy), level)
    try:
        body = _body(doc, pretty)
    except orjson.JSONDecodeError:  # wide ints cannot be pretty-printed by orjson
        body = encode(doc)
    native = agree(plan, body)
    if plan.native is not None and isinstance(doc, dict | list):
        assert native is not None  # a plain document is always answered


@_SETTINGS
@given(
    policy=native_policies(),
    doc=documents(),
    level=st.sampled_from(LEVEL_NAMES),
    seed=st.integers(0, 2**32),
)
def test_random_damage(tmp_path_factory: Any, policy: str, doc: Any, level: str, seed: int) -> None:
    plan = plan_of(_ruleset(tmp_path_factory, policy), level)
    body = bytearray(encode(doc))
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 3)):
        where = rng.randrange(len(body) + 1)
        what = rng.choice([b"", b'"', b"\\", b",", b"}", b"]", b"\xff", b"\xe4\xb8", b"-0", b"e9"])
        cut = rng.randint(0, 2)
        body[where : where + cut] = what
    agree(plan, bytes(body))


# -- the vectorised scans: block boundaries, every position -------------------------------------
# gateway/_fastmask.c scans strings sixteen bytes at a time, validates runs of
# three-byte characters five at a time, scans digits eight at a time and
# hashes names from two words. Each case below is placed at every offset
# across two blocks, so every lane and both block edges see it.
SCAN_POLICY = policy_yaml(
    '  - {name: b, paths: ["$..b"], level: secret, action: redact}\n'
    '  - {name: m, paths: ["$..m"], level: secret, action: {mask: {keep_first: 2, keep_last: 3}}}\n'
    '  - {name: q, paths: ["$..q"], level: secret, action: {mask: {keep_first: 1, char: "\\""}}}\n'
    '  - {name: r, paths: ["$..r"], level: secret, action: {mask: {keep_last: 1, char: "\\\\"}}}\n'
    '  - {name: h, paths: ["$..long_member_name_x"], level: secret, action: hash}\n'
    '  - {name: d, paths: ["$..abcdefgh", "$..abcd", "$..abc"], level: secret, action: drop}\n'
)
CJK = "客户信息保护规范身份证号码银行账户"  # three-byte characters only


@pytest.fixture(scope="module")
def scan_plan(tmp_path_factory: Any) -> Plan:
    d = tmp_path_factory.mktemp("rules")
    (d / "levels.yaml").write_text(LEVELS, encoding="utf-8")
    (d / "p.yaml").write_text(SCAN_POLICY, encoding="utf-8")
    return plan_of(load_rules(d, hash_key=KEY), "public")


def _doc(text: bytes) -> bytes:
    """The same string token as a kept value, masked values and a member name."""
    fields = [b"k", b"m", b"q", b"r", b"long_member_name_x"]
    name = b',"%s":1' % text if b"\\" not in text else b""  # escaped names: declined
    return b"{" + b",".join(b'"%s":"%s"' % (f, text) for f in fields) + name + b"}"


@pytest.mark.parametrize(
    "piece",
    ["a", "é", "中", "😀", "\U0010ffff", "\\n", "\\u00e9", '\\"', "\\\\", "\\ud83d\\ude00", "\\/"],
)
def test_string_pieces_at_every_offset(scan_plan: Plan, piece: str) -> None:
    for pad in range(0, 40):
        for body_text in ("x" * pad + piece, CJK[: pad % 17] + "x" * (pad // 3) + piece + CJK):
            agree(scan_plan, _doc(body_text.encode()), must_answer=True)


@pytest.mark.parametrize("length", range(0, 50))
def test_long_non_ascii_strings(scan_plan: Plan, length: int) -> None:
    for text in (
        (CJK * 3)[:length],
        "a" + (CJK * 3)[:length],
        "ab" + (CJK * 3)[:length] + "c",
        ("中a" * 30)[:length],
        ("é中😀" * 20)[:length],
        ("\U00010000" + CJK)[: length % 18],
    ):
        agree(scan_plan, _doc(text.encode()), must_answer=True)


BAD_UTF8 = [
    b"\xff",
    b"\x80",  # a lone continuation byte
    b"\xc0\xaf",  # overlong
    b"\xc1\xbf",
    b"\xe0\x80\xaf",  # overlong three-byte
    b"\xe0\x9f\xbf",
    b"\xed\xa0\x80",  # a surrogate encoded in UTF-8
    b"\xed\xbf\xbf",
    b"\xf0\x80\x80\xaf",  # overlong four-byte
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf5\x80\x80\x80",
    b"\xe4\xb8",  # truncated
    b"\xe4\x41\x80",
    b"\xe4\xb8\x41",
    b"\xf0\x9f\x98",
]


@pytest.mark.parametrize("bad", BAD_UTF8)
def test_invalid_utf8_at_every_position(scan_plan: Plan, bad: bytes) -> None:
    for base in ("x" * 48, CJK * 3, "x中" * 16):
        raw = base.encode()
        for pos in range(0, 48):
            # the damage at byte pos, splitting a character where it falls
            body = _doc(raw[:pos] + bad + raw[pos:])
            assert scan_plan.mask_bytes(body) is None
            agree(scan_plan, body)


def test_control_characters_at_every_position(scan_plan: Plan) -> None:
    for ctl in [0, 1, 9, 10, 13, 31, 127]:
        for base in ("x" * 40, CJK * 2):
            raw = base.encode()
            for pos in range(0, 40):
                body = _doc(raw[:pos] + bytes([ctl]) + raw[pos:])
                if ctl == 127:  # DEL is a plain character in JSON
                    agree(scan_plan, body, must_answer=True)
                else:
                    assert scan_plan.mask_bytes(body) is None
                    agree(scan_plan, body)


@pytest.mark.parametrize("bad", [b"\\x", b"\\u12", b"\\u12g4", b"\\udc00", b"\\ud800x", b"\\"])
def test_bad_escapes_at_every_position(scan_plan: Plan, bad: bytes) -> None:
    for pos in range(0, 36):
        body = _doc(b"y" * pos + bad + b"z")
        assert scan_plan.mask_bytes(body) is None
        agree(scan_plan, body)


def test_truncated_bodies(scan_plan: Plan) -> None:
    full = (
        _doc(("ab" + CJK + "\\n😀" + "x" * 20).encode())[:-1] + b',"n":[123456789012345678,1.5e3]}'
    )
    agree(scan_plan, full, must_answer=True)
    for end in range(len(full)):
        assert scan_plan.mask_bytes(full[:end]) is None
        agree(scan_plan, full[:end])


@pytest.mark.parametrize("digits", range(1, 26))
def test_numbers_of_every_length(scan_plan: Plan, digits: int) -> None:
    n = "9876543210" * 3
    for text in (
        n[:digits],
        "-" + n[:digits],
        n[:digits] + ".5",
        "1." + n[:digits],
        n[:digits] + "e-5",
    ):
        tail = text.encode()
        agree(
            scan_plan, b'{"b":' + tail + b',"m":' + tail + b',"k":' + tail + b"}", must_answer=True
        )
        agree(scan_plan, b"[" + tail + b"]", must_answer=True)
        for cut in (b"[" + tail, b'{"k":' + tail + b"x}", b"[" + tail + b"/]"):
            agree(scan_plan, cut)


def test_names_near_the_rules_names(scan_plan: Plan) -> None:
    """Names sharing prefixes, suffixes and lengths with the rules' names, and duplicates."""
    names = ["abc", "abcd", "abcdefgh", "long_member_name_x", "b", "m", "q", "r"]
    near = set()
    for name in names:
        near |= {name[:-1], name + "x", "x" + name, name[1:], name.upper()}
        near |= {name[:i] + "_" + name[i + 1 :] for i in range(len(name))}
    for extra in sorted(near - set(names)):
        doc = {extra: "v", **{name: "0123456789" for name in names}}
        agree(scan_plan, orjson.dumps(doc), must_answer=True)
        dup = b'{"%s":1,"k":2,"%s":3}' % (extra.encode(), extra.encode())
        assert scan_plan.mask_bytes(dup) is None
    many = {f"k{i}": i for i in range(200)}  # beyond the duplicate filter's bits
    agree(scan_plan, orjson.dumps(many), must_answer=True)
    assert scan_plan.mask_bytes(orjson.dumps(many)[:-1] + b',"k150":1}') is None
