from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.headers import client_response_headers, rewrite_location, upstream_request_headers


def _h(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_request_headers_strip_hop_by_hop_and_set_forwarding() -> None:
    out = upstream_request_headers(
        _h(
            ("Host", "gw.example"),
            ("Connection", "close, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Upgrade", "websocket"),
            ("Transfer-Encoding", "chunked"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Gateway-Subject", "forged"),
            ("Accept", "application/json"),
            ("Expect", "100-continue"),
        ),
        client_ip="10.1.1.1",
        forwarded_for=None,
        proto="http",
        host="gw.example",
        set_headers=[("X-Gateway-Subject", "alice")],
    )
    assert dict(out) == {
        "Accept": "application/json",
        "X-Forwarded-For": "10.1.1.1",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "gw.example",
        "X-Gateway-Subject": "alice",
    }


def test_trusted_chain_is_extended() -> None:
    out = upstream_request_headers(
        _h(), client_ip="10.0.0.9", forwarded_for="203.0.113.5", proto="https", host=None
    )
    assert out["X-Forwarded-For"] == "203.0.113.5, 10.0.0.9"
    assert "X-Forwarded-Host" not in out


def test_response_headers_drop_hops_and_stack_banners() -> None:
    out = client_response_headers(
        _h(
            ("Connection", "X-Hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Server", "Apache Tomcat/7.0.1"),
            ("X-Powered-By", "JSP/2.2"),
            ("Content-Type", "application/json"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ),
        upstream_url=URL("http://10.0.0.5:8080"),
        gateway_origin="https://gw.example",
    )
    assert list(out.items()) == [
        ("Content-Type", "application/json"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_location_rewrite() -> None:
    up = URL("http://10.0.0.5:8080/legacy")
    gw = "https://gw.example"
    assert rewrite_location("http://10.0.0.5:8080/legacy/api/x?y=1", up, gw) == gw + "/api/x?y=1"
    assert rewrite_location("/legacy/api/x", up, gw) == "/api/x"
    assert rewrite_location("https://other.example/x", up, gw) == "https://other.example/x"
    assert rewrite_location("http://10.0.0.5:9999/x", up, gw) == "http://10.0.0.5:9999/x"
    assert rewrite_location("next", up, gw) == "next"
    assert rewrite_location("//10.0.0.5:8080/x", up, gw) == "//10.0.0.5:8080/x"


def test_the_gateway_origin_is_only_asked_for_when_a_location_is_rewritten() -> None:
    asked: list[int] = []

    def origin() -> str:
        asked.append(1)
        return "https://gw.example"

    up = URL("http://legacy:8080/app")
    plain = CIMultiDictProxy(CIMultiDict({"Content-Type": "text/plain"}))
    assert client_response_headers(plain, upstream_url=up, gateway_origin=origin) == {
        "Content-Type": "text/plain"
    }
    assert asked == []
    moved = CIMultiDictProxy(CIMultiDict({"Location": "http://legacy:8080/app/x"}))
    out = client_response_headers(moved, upstream_url=up, gateway_origin=origin)
    assert out["Location"] == "https://gw.example/x" and asked == [1]
