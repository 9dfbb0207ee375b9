from __future__ import annotations

import pytest

from gateway.routing import Match, MethodNotAllowed, RoutePatternError, Router, compile_pattern


def _router(*specs: tuple[str, list[str] | None, str], ci: bool = False) -> Router[str]:
    return Router(Router.route(p, m, name, case_insensitive=ci) for p, m, name in specs)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/customers", "customers"),
        ("/api/customers/", "customers"),
        ("/api/customers/1", "customers"),
        ("/api/customers/1/accounts/2", "customers"),
        ("/api/customersX", None),
        ("/api/ops/x", "ops-one"),
        ("/api/ops/x/y", None),
        ("/api/ops", None),
        ("/health", "health"),
        ("/health/", None),
        ("/a/x/b/y/c", "mid"),
        ("/a/b/c", "mid"),
    ],
)
def test_patterns(path: str, expected: str | None) -> None:
    router = _router(
        ("/api/customers/**", None, "customers"),
        ("/api/ops/*", None, "ops-one"),
        ("/health", None, "health"),
        ("/a/**/b/**/c", None, "mid"),
    )
    found = router.resolve(path, "GET")
    assert (found.target if isinstance(found, Match) else None) == expected


def test_first_match_in_file_order_wins() -> None:
    router = _router(("/api/**", None, "first"), ("/api/customers/**", None, "second"))
    assert router.resolve("/api/customers/1", "GET") == Match("first")


def test_method_selection_and_405_union() -> None:
    router = _router(
        ("/api/**", ["POST"], "writes"),
        ("/api/customers/**", ["GET"], "reads"),
    )
    assert router.resolve("/api/customers/1", "GET") == Match("reads")
    assert router.resolve("/api/customers/1", "HEAD") == Match("reads")
    assert router.resolve("/api/customers/1", "POST") == Match("writes")
    assert router.resolve("/api/customers/1", "DELETE") == MethodNotAllowed(["GET", "HEAD", "POST"])
    assert router.resolve("/other", "GET") is None


def test_case_insensitive_routes_fold_case() -> None:
    router = _router(("/Api/Customers/**", ["GET"], "ci"), ci=True)
    assert router.resolve("/API/CUSTOMERS/7", "GET") == Match("ci")
    assert _router(("/api/**", None, "cs")).resolve("/API/x", "GET") is None


def test_globstar_is_linear_enough() -> None:
    router = _router(("/**/**/**/**/z", None, "deep"))
    assert router.resolve("/" + "/".join(["a"] * 300), "GET") is None


@pytest.mark.parametrize("bad", ["api", "/a//b", "/a/../b", "/a*", "/a/b**", "/a%2f", "/a;b"])
def test_bad_patterns(bad: str) -> None:
    with pytest.raises(RoutePatternError):
        compile_pattern(bad)
