from __future__ import annotations

import json
import re
import string
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.demo.data import (
    BANK_BINS,
    COMPOUND_SURNAMES,
    CUSTOMER_FIELDS,
    EMAIL_DOMAINS,
    MOBILE_PREFIXES,
    REGIONS,
    Customer,
    branches,
    cn_id_check_char,
    cn_id_valid,
    generate_customers,
    luhn_check_digit,
    luhn_valid,
    region_branch,
    to_json_bytes,
)

CUSTOMERS = generate_customers()
digit_strings = st.text(alphabet=string.digits, min_size=1, max_size=30)


def all_card_numbers(customers: list[Customer]) -> list[str]:
    return [c["bank_card"] for c in customers] + [
        a["number"] for c in customers for a in c["accounts"]
    ]


def test_default_count_ids_and_key_order() -> None:
    assert [c["id"] for c in CUSTOMERS] == list(range(1, 501))
    assert all(tuple(c) == CUSTOMER_FIELDS for c in CUSTOMERS)


def test_unique_identifiers() -> None:
    for field in ("customer_no", "id_number", "phone"):
        values = [c[field] for c in CUSTOMERS]
        assert len(set(values)) == len(values), field
    assert all(re.fullmatch(r"C[0-9]{10}", c["customer_no"]) for c in CUSTOMERS)


def test_id_numbers_match_birth_date_gender_and_region() -> None:
    for c in CUSTOMERS:
        id_number = c["id_number"]
        assert cn_id_valid(id_number), id_number
        assert id_number[6:14] == c["birth_date"].replace("-", "")
        assert (int(id_number[16]) % 2 == 1) == (c["gender"] == "男")
        province, city, district = REGIONS[id_number[:6]]
        head = province if province == city else province + city
        assert c["address"].startswith(head + district), c["address"]
        assert date.fromisoformat(c["birth_date"]) <= date(2007, 12, 31)  # adult


def test_known_gb11643_example() -> None:
    assert cn_id_check_char("11010519491231002") == "X"
    assert cn_id_valid("11010519491231002X")
    assert cn_id_valid("11010519491231002x")  # legacy systems store lowercase too
    assert not cn_id_valid("11010519491231003X")
    assert not cn_id_valid("11010519491231002")
    # Right check digit but 30 February is no birth date.
    first17 = "11010519490230002"
    assert not cn_id_valid(first17 + cn_id_check_char(first17))


@given(st.text(alphabet=string.digits, min_size=17, max_size=17), st.integers(0, 16))
def test_mod11_2_detects_any_single_digit_change(first17: str, pos: int) -> None:
    changed = first17[:pos] + str((int(first17[pos]) + 1) % 10) + first17[pos + 1 :]
    assert cn_id_check_char(changed) != cn_id_check_char(first17)


def test_luhn_known_values() -> None:
    assert luhn_check_digit("7992739871") == "3"
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("7") and not luhn_valid("7992739871a") and not luhn_valid("")
    with pytest.raises(ValueError):
        luhn_check_digit("12a4")


@given(digit_strings, st.data())
def test_luhn_round_trip_and_single_digit_errors(partial: str, data: st.DataObject) -> None:
    number = partial + luhn_check_digit(partial)
    assert luhn_valid(number)
    pos = data.draw(st.integers(0, len(number) - 1))
    bump = data.draw(st.integers(1, 9))
    wrong = number[:pos] + str((int(number[pos]) + bump) % 10) + number[pos + 1 :]
    assert not luhn_valid(wrong)


def test_cards_and_account_numbers_are_luhn_valid_with_real_bins() -> None:
    lengths = {prefix: length for prefix, _, length in BANK_BINS}
    for number in all_card_numbers(CUSTOMERS):
        assert luhn_valid(number), number
        assert 16 <= len(number) <= 19
        assert len(number) == lengths[number[:6]]


def test_field_shapes() -> None:
    for c in CUSTOMERS:
        assert 2 <= len(c["name"]) <= 3
        assert c["phone"][:3] in MOBILE_PREFIXES and len(c["phone"]) == 11
        assert c["phone"].isdigit()
        local, _, domain = c["email"].partition("@")
        assert local.isascii() and local and domain in EMAIL_DOMAINS
        assert isinstance(c["balance"], Decimal)
        assert c["balance"].as_tuple().exponent == -2
        assert len(c["txn_password"]) == 6 and c["txn_password"].isdigit()
        assert c["risk_level"] in {"R1", "R2", "R3", "R4", "R5"}
        assert isinstance(c["credit_limit"], int)
        assert c["branch"] in {b["name"] for b in branches()}
        created = datetime.fromisoformat(c["created_at"])
        assert created.tzinfo is not None
        assert 1 <= len(c["accounts"]) <= 3
        for a in c["accounts"]:
            assert isinstance(a["account_id"], int)
            assert len(str(a["account_id"])) == 20 and a["account_id"] > 2**64
            assert a["type"] in {"储蓄", "信用", "理财"} and a["currency"] in {"CNY", "USD"}
            assert a["balance"].as_tuple().exponent == -2
            assert date.fromisoformat(a["opened"]) >= created.date()
    assert any(str(c["balance"]).endswith("0") for c in CUSTOMERS)
    assert any(c["name"][:2] in dict(COMPOUND_SURNAMES) for c in CUSTOMERS)
    assert {c["gender"] for c in CUSTOMERS} == {"男", "女"}


def test_about_a_third_of_remarks_leak_own_phone_or_id() -> None:
    leaks = sum(c["phone"] in c["remarks"] or c["id_number"] in c["remarks"] for c in CUSTOMERS)
    assert 0.25 < leaks / len(CUSTOMERS) < 0.42


def test_branches_table() -> None:
    assert region_branch("330106") == "杭州西湖支行"
    assert region_branch("310115") == "上海浦东支行"
    assert len(branches()) == len(REGIONS)


def test_deterministic_per_seed() -> None:
    assert generate_customers(50) == generate_customers(50)
    assert to_json_bytes(generate_customers(50)) == to_json_bytes(generate_customers(50))
    assert generate_customers(50) != generate_customers(50, seed=1)
    # Generation is sequential, so asking for more never changes earlier records.
    assert generate_customers(50) == CUSTOMERS[:50]


def test_to_json_bytes_keeps_exact_numbers_and_utf8() -> None:
    doc: dict[str, Any] = {
        "balance": Decimal("1024.50"),
        "zero": Decimal("0.00"),
        "account_id": 98765432109876543210,
        "negative": -(2**70),
        "u64": 2**64 - 1,
        "flag": True,
        "name": "张三",
    }
    out = to_json_bytes(doc)
    assert out == (
        b'{"balance":1024.50,"zero":0.00,"account_id":98765432109876543210,'
        b'"negative":-1180591620717411303424,"u64":18446744073709551615,"flag":true,'
        b'"name":"' + "张三".encode() + b'"}'
    )


def test_to_json_bytes_rejects_non_finite_decimal() -> None:
    with pytest.raises(ValueError):
        to_json_bytes({"x": Decimal("NaN")})


def test_customers_round_trip_exactly() -> None:
    out = to_json_bytes(CUSTOMERS)
    assert b"\\u" not in out
    parsed = json.loads(out, parse_float=Decimal)
    # repr shows key order, Decimal scale ("1024.50" vs "1024.5") and big ints.
    assert repr(parsed) == repr(CUSTOMERS)
    assert to_json_bytes(parsed) == out
