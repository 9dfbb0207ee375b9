"""The forward endpoint: send the authorised request upstream and relay the answer.

Theory of operation:

- The upstream URL is the upstream's base URL + the *normalised* path + the raw
  query, built without re-encoding, so the upstream receives exactly the path
  that was matched and authorised.
- Request bodies are streamed, never buffered whole: a declared
  ``Content-Length`` over the cap is refused with 413 before the upstream is
  contacted; a chunked body is counted as it streams and the upstream request
  is aborted at the cap (413). A stalled body is cut off after ``body_timeout``.
- Routes without a policy stream the response back as received (status,
  headers minus hop-by-hop, body bytes including their Content-Encoding).
  Routes with a policy hand the response to the body filter, which buffers,
  checks and rewrites it (:mod:`gateway.bodyfilter`), or fails closed.
- Connection errors answer 502, timeouts 504; neither reveals upstream
  addresses or exception text. An upstream failing after the response has
  started aborts the client connection rather than sending a body that looks
  complete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from functools import lru_cache

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.exchange import Exchange
from gateway.headers import client_response_headers, upstream_request_headers
from gateway.problem import problem
from gateway.upstream import UpstreamResponse

log = logging.getLogger("gateway.proxy")


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


def upstream_target(ex: Exchange) -> str:
    """The request target sent upstream: base path + normalised path + raw query."""
    assert ex.route is not None and ex.path is not None
    path = ex.route.upstream.base_path + ex.path
    return f"{path}?{ex.query}" if ex.query else path


def _has_body(request: web.BaseRequest) -> bool:
    return request.content_length not in (None, 0) or "Transfer-Encoding" in request.headers


async def _stream_request_body(
    request: web.BaseRequest, cap: int, idle: float
) -> AsyncIterator[bytes]:
    sent = 0
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await request.content.readany()
        except TimeoutError:
            raise BodyTimeout from None
        if not chunk:
            return
        sent += len(chunk)
        if sent > cap:
            raise BodyTooLarge
        yield chunk


def upstream_headers(ex: Exchange) -> CIMultiDict[str]:
    assert ex.route is not None
    cfg = ex.runtime.config
    own: list[tuple[str, str]] = [(cfg.request_id_header, ex.request_id)]
    principal = ex.principal
    if principal is not None and principal.subject is not None:
        own.append((cfg.identity_headers.subject, principal.subject))
    if principal is not None:
        own.append((cfg.identity_headers.clearance, principal.level_name))
    static = ex.route.upstream.config.headers
    policy = ex.route.policy is not None
    if policy:
        # Not even the upstream's static headers may ask for part of a body or for
        # "not modified" (see _strip).
        own.extend((k, v) for k, v in static.items() if k.lower() not in _POLICY_STRIPPED)
        # Ask for no compression: the body is decoded (capped) anyway if it comes compressed.
        own.append(("Accept-Encoding", "identity"))
    else:
        own.extend(static.items())
    return upstream_request_headers(
        ex.request.headers,
        # Each hop appends the peer it heard from (the chain's own convention).
        client_ip=ex.peer,
        forwarded_for=ex.forwarded_for,
        proto=ex.request.scheme,
        host=ex.request.headers.get("Host"),
        set_headers=own,
        strip=_strip(
            cfg.identity_headers.subject,
            cfg.identity_headers.clearance,
            ex.route.config.forward_token,
            policy,
        ),
    )


@lru_cache(maxsize=64)
def _strip(subject: str, clearance: str, forward_token: bool, policy: bool) -> tuple[str, ...]:
    """Inbound headers that never go upstream on such a route (the same few per route).

    Inbound copies of identity headers go even when the gateway sets none; the
    caller's token goes unless the route forwards it (static upstream credentials,
    set after stripping, are the gateway's own and stay). On a policy route the
    caller must only ever get a whole body that the policy has seen: no partial
    content, no "not modified" against an unmasked validator.
    """
    return (
        subject,
        clearance,
        *(() if forward_token else ("Authorization",)),
        *(POLICY_STRIPPED_REQUEST_HEADERS if policy else ()),
    )


# Routes without a policy relay bodies up to this size (known length) in one write.
SMALL_BODY = 64 * 1024

POLICY_STRIPPED_REQUEST_HEADERS = (
    "Range",
    "If-Range",
    "If-None-Match",
    "If-Modified-Since",
    "If-Match",
    "If-Unmodified-Since",
)
_POLICY_STRIPPED = frozenset(h.lower() for h in POLICY_STRIPPED_REQUEST_HEADERS)


async def forward(ex: Exchange) -> web.StreamResponse:
    assert ex.route is not None
    request = ex.request
    limits = ex.runtime.config.limits
    if request.content_length is not None and request.content_length > limits.max_request_body:
        ex.deny("deny_policy", "request_too_large")
        return problem(413, ex.request_id, "The request body is too large.")
    body = (
        _stream_request_body(request, limits.max_request_body, limits.body_timeout)
        if _has_body(request)
        else None
    )
    client = ex.route.upstream.client
    method = request.method
    if method == "HEAD" and ex.route.policy is not None:
        # HEAD must describe the masked body, which only exists after a GET.
        method = "GET"
    t0 = time.perf_counter()
    try:
        upstream = await client.request(method, upstream_target(ex), upstream_headers(ex), body)
    except BodyTooLarge:
        ex.deny("deny_policy", "request_too_large")
        return problem(413, ex.request_id, "The request body is too large.")
    except BodyTimeout:
        ex.deny("deny_policy", "request_body_timeout")
        return problem(408, ex.request_id, "The request body was not received in time.")
    except TimeoutError:
        ex.deny("upstream_error", "upstream_timeout")
        return problem(504, ex.request_id, "The upstream service did not answer in time.")
    except (aiohttp.ClientError, OSError) as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, BodyTooLarge):
            ex.deny("deny_policy", "request_too_large")
            return problem(413, ex.request_id, "The request body is too large.")
        if isinstance(cause, BodyTimeout):
            ex.deny("deny_policy", "request_body_timeout")
            return problem(408, ex.request_id, "The request body was not received in time.")
        log.warning("upstream %s unreachable: %s", ex.route.upstream.name, type(exc).__name__)
        ex.deny("upstream_error", "upstream_unreachable")
        return problem(502, ex.request_id, "The upstream service is unavailable.")
    try:
        ex.upstream_status = upstream.status
        ex.upstream_ms = (time.perf_counter() - t0) * 1000
        if ex.route.policy is not None:
            from gateway.bodyfilter import filter_response

            return await filter_response(ex, upstream)
        return await _relay(ex, upstream)
    finally:
        upstream.release()


async def _relay(ex: Exchange, upstream: UpstreamResponse) -> web.StreamResponse:
    """Stream an upstream response to the caller unchanged (routes without a policy)."""
    assert ex.route is not None
    headers = client_response_headers(
        upstream.headers, upstream_url=ex.route.upstream.url, gateway_origin=ex.gateway_origin
    )
    headers.popall("Content-Length", None)
    headers[ex.runtime.config.request_id_header] = ex.request_id
    length = upstream.content_length
    if (
        length is not None
        and length <= SMALL_BODY
        and ex.request.method != "HEAD"
        and "Transfer-Encoding" not in upstream.headers
    ):
        # A small body of known length: read it, answer in one write (headers and
        # body together) instead of three; nothing is sent before it is complete.
        try:
            body = await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "upstream %s failed mid-body: %s", ex.route.upstream.name, type(exc).__name__
            )
            ex.deny("upstream_error", "upstream_body_failed")
            return problem(502, ex.request_id, "The upstream service is unavailable.")
        return web.Response(
            status=upstream.status, reason=upstream.reason, headers=headers, body=body
        )
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if upstream.content_length is not None and "Transfer-Encoding" not in upstream.headers:
        resp.content_length = upstream.content_length
    await resp.prepare(ex.request)
    if ex.request.method == "HEAD":
        await resp.write_eof()
        return resp
    try:
        async for chunk in upstream.iter_any():
            await resp.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The caller already has our headers: cut the connection so a truncated
        # body can never pass for a complete one.
        log.warning("upstream %s failed mid-body: %s", ex.route.upstream.name, type(exc).__name__)
        ex.deny("upstream_error", "upstream_body_failed")
        if ex.request.transport is not None:
            ex.request.transport.close()
        raise ConnectionResetError("upstream failed mid-body") from None
    await resp.write_eof()
    return resp
