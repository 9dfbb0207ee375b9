"""Our JSONPath beyond the compliance suite: errors, locations, exact numbers, I-Regexp."""

from __future__ import annotations

import pytest

from gateway.jsoncodec import Number
from gateway.jsonpath import (
    NOTHING,
    JSONPathSyntaxError,
    compile_path,
    format_location,
    json_equal,
)
from gateway.jsonpath._iregexp import translate

DOC = {
    "data": [
        {"id": 1, "balance": Number("100.10"), "tags": ["vip"], "name": "张三"},
        {"id": 2, "balance": Number("99999999999999999999.99"), "tags": [], "name": "李四"},
        {"id": 3, "balance": 7, "vip": True},
    ]
}


def test_find_returns_locations_and_values() -> None:
    found = compile_path("$.data[*].id").find(DOC)
    assert found == [(("data", 0, "id"), 1), (("data", 1, "id"), 2), (("data", 2, "id"), 3)]
    assert compile_path("$..id").values(DOC) == [1, 2, 3]


@pytest.mark.parametrize(
    ("path", "ids"),
    [
        ("$.data[?@.balance > 100]", [1, 2]),
        ("$.data[?@.balance == 100.1]", [1]),
        ("$.data[?@.balance > 99999999999999999999.98]", [2]),
        ("$.data[?@.balance == 7.0]", [3]),
        ("$.data[?@.vip == true]", [3]),
        ("$.data[?@.vip == 1]", []),
        ("$.data[?length(@.tags) > 0]", [1]),
        ("$.data[?count(@.*) == 3]", [3]),
        ("$.data[?match(@.name, '张.')]", [1]),
        ("$.data[?search(@.name, '\\\\p{Han}')]", []),
        ("$.data[-1:]", [3]),
        ("$.data[::-2]", [3, 1]),
    ],
)
def test_filters_compare_exact_numbers(path: str, ids: list[int]) -> None:
    try:
        values = compile_path(path).values(DOC)
    except JSONPathSyntaxError:
        values = []
    assert [v["id"] for v in values] == ids


def test_number_text_is_not_changed_by_evaluation() -> None:
    compile_path("$.data[?@.balance > 1]").values(DOC)
    assert DOC["data"][0]["balance"] == Number("100.10")


@pytest.mark.parametrize(
    ("path", "offset"),
    [
        ("$.", 2),
        ("$[01]", 2),
        ("$[?@.a == @.*]", 10),
        ("$[?length(@.*) > 1]", 10),
        ("$['a'", 5),
        ("$.a ", 3),
        ("$[?true]", 3),
        ("$[?nosuch(@)]", 3),
    ],
)
def test_syntax_errors_carry_the_offset(path: str, offset: int) -> None:
    with pytest.raises(JSONPathSyntaxError) as info:
        compile_path(path)
    assert info.value.position == offset


def test_is_simple_separates_automaton_paths() -> None:
    assert compile_path("$..phone").is_simple
    assert compile_path("$.data[*].accounts[0].number").is_simple
    assert compile_path("$['a','b'][-1]").is_simple
    assert not compile_path("$.data[?@.vip]").is_simple
    assert not compile_path("$.data[1:]").is_simple


def test_format_location_escapes_names() -> None:
    assert format_location(("data", 0, "it's", "a\\b", "\n", "\x01")) == (
        "$['data'][0]['it\\'s']['a\\\\b']['\\n']['\\u0001']"
    )
    assert format_location(()) == "$"


def test_json_equal_is_type_aware() -> None:
    assert json_equal(1, Number("1.0"))
    assert json_equal([1, {"a": Number("2.50")}], [1.0, {"a": 2.5}])
    assert not json_equal(True, 1)
    assert not json_equal(None, NOTHING)
    assert json_equal(NOTHING, NOTHING)
    assert not json_equal({"a": 1}, {"a": 1, "b": 2})


@pytest.mark.parametrize(
    ("pattern", "text", "full"),
    [
        ("a.c", "abc", True),
        ("a.c", "a\nc", False),
        ("a.c", "a\rc", False),
        ("[a-c]+", "abcab", True),
        ("\\p{Lu}\\P{Lu}", "Ab", True),
        ("[\\p{Nd}-]+", "12-3", True),
        ("x{2,3}", "xxx", True),
        ("(ab|cd)*", "abcd", True),
        ("^ab$", "ab", True),
    ],
)
def test_iregexp_translation(pattern: str, text: str, full: bool) -> None:
    rx = translate(pattern)
    assert rx is not None
    assert (rx.fullmatch(text) is not None) is full


@pytest.mark.parametrize("pattern", ["\\d", "(?i)a", "a{3,2}", "[b-a]", "a)", "\\p{Xx}", "[]"])
def test_non_iregexp_patterns_are_rejected(pattern: str) -> None:
    assert translate(pattern) is None
