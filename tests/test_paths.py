from __future__ import annotations

import pytest

from gateway.paths import PathError, normalise_path, split_target


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/b/..", "/a/"),
        ("//a//b//", "/a/b/"),
        ("/a/%2e/b", "/a/b"),
        ("/a/%2E%2e/b", "/b"),
        ("/a/.%2e/b", "/b"),
        ("/%61%62c", "/abc"),
        ("/a%20b", "/a%20b"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a/%7Eb", "/a/~b"),
        ("/a/b.json", "/a/b.json"),
        ("/a/...", "/a/..."),
    ],
)
def test_normalises(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("/a%2Fb", "encoded slash"),
        ("/a%2fb", "encoded slash"),
        ("/a%5cb", "encoded backslash"),
        ("/a\\b", "backslash"),
        ("/a%00", "encoded NUL"),
        ("/a%zz", "malformed percent-encoding"),
        ("/a%4", "malformed percent-encoding"),
        ("/a%252e", "double percent-encoding"),
        ("/..", "path climbs above the root"),
        ("/a/../../b", "path climbs above the root"),
        ("/a;jsessionid=1", "path parameters (';') are not accepted"),
        ("/a/..;/b", "path parameters (';') are not accepted"),
        ("/a b", "invalid character in path"),
        ("/caf\u00e9", "invalid character in path"),
        ("a/b", "request target must be an absolute path"),
        ("http://evil/a", "request target must be an absolute path"),
        ("*", "request target must be an absolute path"),
    ],
)
def test_refuses_ambiguous(raw: str, reason: str) -> None:
    with pytest.raises(PathError) as err:
        normalise_path(raw)
    assert err.value.reason == reason


def test_split_keeps_query_raw() -> None:
    assert split_target("/a/../b?x=%2F&y=1") == ("/b", "x=%2F&y=1")
    assert split_target("/a?") == ("/a", "")
    with pytest.raises(PathError):
        split_target("/a#frag")
