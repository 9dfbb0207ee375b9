from __future__ import annotations

from urllib.parse import unquote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.query import QueryError, clamp_page_size, query_keys


def test_query_keys_are_names_only() -> None:
    assert query_keys("") == []
    assert query_keys("size=5&page=2&id_number=110105&page=3&a%20b=1&flag") == [
        "a b",
        "flag",
        "id_number",
        "page",
        "size",
    ]


@given(st.text(alphabet="ab%2+=&_0", max_size=30))
def test_query_keys_decode_only_what_needs_it(query: str) -> None:
    # Names without '%' or '+' are not run through unquote_plus: same result.
    every = {unquote_plus(p.partition("=")[0]) for p in query.split("&") if p}
    assert query_keys(query) == sorted(every)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("page=1&size=5000", "page=1&size=100"),
        ("size=20&page=1", "size=20&page=1"),
        ("page=1", "page=1"),
        ("", ""),
        ("size=100", "size=100"),
        ("si%7Ae=999", "si%7Ae=100"),
        ("size=0", "size=0"),
    ],
)
def test_clamp(query: str, expected: str) -> None:
    assert clamp_page_size(query, "size", 100) == expected


@pytest.mark.parametrize("query", ["size=1&size=5000", "size=-1", "size=1e9", "size=", "size=٣"])
def test_ambiguous_or_bad_page_size_is_refused(query: str) -> None:
    with pytest.raises(QueryError) as err:
        clamp_page_size(query, "size", 100)
    assert "5000" not in str(err.value)
