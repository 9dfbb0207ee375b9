"""Which headers cross the gateway, in each direction (pure: no I/O).

Request (caller → upstream):
- hop-by-hop headers (RFC 9110 7.6.1) and every header named in ``Connection``
  are removed; so are ``Host`` (the client session sets the upstream's),
  ``Expect`` (the gateway answers ``100-continue`` itself), every inbound
  ``X-Forwarded-*``/``Forwarded``/``X-Real-IP`` (a caller must not choose the
  address the upstream sees) and any header the gateway itself sets towards
  the upstream (identity headers, the request id).
- ``X-Forwarded-For`` is the socket peer, appended to the inbound chain only
  when the peer is a trusted proxy (otherwise the caller's chain is
  dropped); ``X-Forwarded-Proto`` and
  ``X-Forwarded-Host`` describe the gateway's listener.

Response (upstream → caller):
- hop-by-hop and ``Connection``-named headers are removed, and so are ``Server``
  and ``X-Powered-By``, which would advertise the legacy stack behind us.
- ``Location``/``Content-Location`` pointing at the upstream's origin are
  rewritten to the gateway's origin (and the upstream's base path removed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
_NOT_FORWARDED = frozenset({"host", "expect", "forwarded", "x-real-ip"})
_UPSTREAM_ADVERTISING = frozenset({"server", "x-powered-by", "x-aspnet-version"})


def connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Header names listed in ``Connection`` (they are hop-by-hop for this message)."""
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def upstream_request_headers(
    inbound: CIMultiDictProxy[str],
    *,
    client_ip: str,
    forwarded_for: str | None,
    proto: str,
    host: str | None,
    set_headers: Iterable[tuple[str, str]] = (),
    strip: Iterable[str] = (),
) -> CIMultiDict[str]:
    """Headers to send upstream.

    ``forwarded_for`` is the inbound ``X-Forwarded-For`` chain to extend, or None
    when the caller is not a trusted proxy. ``set_headers`` are the gateway's own
    (request id, identity, static upstream credentials); inbound copies of them
    are dropped first.
    """
    own = list(set_headers)
    drop = _request_drop(tuple(k for k, _ in own), tuple(strip))
    if "Connection" in inbound:
        drop = drop | connection_named(inbound)
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in inbound.items():
        lk = k.lower()
        if lk in drop or lk.startswith("x-forwarded-"):
            continue
        out.add(k, v)
    out["X-Forwarded-For"] = f"{forwarded_for}, {client_ip}" if forwarded_for else client_ip
    out["X-Forwarded-Proto"] = proto
    if host:
        out["X-Forwarded-Host"] = host
    for k, v in own:
        out[k] = v
    return out


@lru_cache(maxsize=256)
def _request_drop(own: tuple[str, ...], strip: tuple[str, ...]) -> frozenset[str]:
    # The same few name sets per route, every request: built once.
    return HOP_BY_HOP | _NOT_FORWARDED | {k.lower() for k in own} | {k.lower() for k in strip}


@lru_cache(maxsize=256)
def _response_skip(drop: tuple[str, ...]) -> frozenset[str]:
    return HOP_BY_HOP | _UPSTREAM_ADVERTISING | {d.lower() for d in drop}


def client_response_headers(
    upstream: CIMultiDictProxy[str],
    *,
    upstream_url: URL,
    gateway_origin: str | Callable[[], str],
    drop: Iterable[str] = (),
) -> CIMultiDict[str]:
    """Headers to send to the caller (body-describing headers are the caller's to fix).

    ``gateway_origin`` may be a function: it is then asked only when a Location
    needs rewriting (most responses have none).
    """
    skip = _response_skip(tuple(drop))
    if "Connection" in upstream:
        skip = skip | connection_named(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in upstream.items():
        lk = k.lower()
        if lk in skip:
            continue
        if lk in ("location", "content-location"):
            if callable(gateway_origin):
                gateway_origin = gateway_origin()
            v = rewrite_location(v, upstream_url, gateway_origin)
        out.add(k, v)
    return out


def rewrite_location(value: str, upstream_url: URL, gateway_origin: str) -> str:
    """Point a Location at the gateway when it points at the upstream."""
    base_path = upstream_url.path.rstrip("/")
    try:
        loc = URL(value)
    except ValueError:
        return value
    if loc.is_absolute():
        if (loc.scheme, loc.host, loc.port) != (
            upstream_url.scheme,
            upstream_url.host,
            upstream_url.port,
        ):
            return value
        rest = value[len(str(loc.origin())) :] or "/"
    elif value.startswith("/") and not value.startswith("//"):
        rest = value
    else:
        return value  # relative reference: resolves against the gateway URL already
    if base_path and (rest == base_path or rest.startswith(base_path + "/")):
        rest = rest[len(base_path) :] or "/"
    return gateway_origin + rest if loc.is_absolute() else rest
