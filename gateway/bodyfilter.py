"""The body filter for routes with a policy: nothing reaches the caller unseen.

Rules (each one has a test in ``tests/test_bodyfilter.py``):

1. The upstream body is read whole, up to ``limits.max_response_body``; a
   larger body, or one cut short (fewer bytes than its ``Content-Length``, a
   broken chunked stream), fails closed.
2. ``Content-Encoding`` (gzip, deflate, br, stacked) is undone with the same
   size cap, so a decompression bomb fails closed; the masked body is sent
   plain (``Content-Encoding`` removed).
3. Only JSON (``application/json`` or ``application/*+json``, UTF-8) is
   masked. A route may name other media types as ``pass_through``; anything
   else fails closed: 502 for a success response, or, for an upstream error
   status, a generic problem+json with that status (a stack trace never
   reaches the caller).
4. The JSON must be strict UTF-8 JSON without BOM, within the nesting limit;
   numbers, unicode and key order come back as the upstream sent them.
5. The masked document is serialised and the headers are fixed to match:
   ``Content-Length`` recomputed; ``ETag``, ``Content-MD5``, ``Digest``,
   ``Content-Range``, ``Accept-Ranges`` dropped (they describe the unmasked
   bytes); ``Cache-Control: no-store`` because the body is one caller's view.
6. Upstream 206 is refused (the request never asks for ranges, so a 206 is a
   misbehaving upstream). HEAD gets the masked response's headers, no body.
7. Empty bodies (204, 304, HEAD-only upstream answers) carry nothing to mask
   and pass with their status.

Failures are counted by ``reason`` (a metric label) and never quote the body.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from gateway.contentcoding import ContentCodingError, decode_content
from gateway.exchange import Exchange
from gateway.headers import client_response_headers
from gateway.jsoncodec import JsonError
from gateway.limiting import account
from gateway.problem import problem

log = logging.getLogger("gateway.bodyfilter")

_DROPPED_RESPONSE_HEADERS = (
    "Content-Length",
    "Content-Encoding",
    "ETag",
    "Content-MD5",
    "Digest",
    "Content-Range",
    "Accept-Ranges",
    "Cache-Control",
    "Expires",
    "Pragma",
)
_GENERIC = "The upstream response could not be delivered safely."


class FailClosed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """``'Application/JSON; charset="UTF-8"'`` -> (``application/json``, {charset: utf-8})."""
    if not content_type:
        return "", {}
    kind, *params = content_type.split(";")
    parsed: dict[str, str] = {}
    for param in params:
        key, sep, value = param.partition("=")
        if sep:
            parsed[key.strip().lower()] = value.strip().strip('"').lower()
    return kind.strip().lower(), parsed


def is_json(kind: str, params: dict[str, str]) -> bool:
    if kind != "application/json" and not (
        kind.startswith("application/") and kind.endswith("+json")
    ):
        return False
    return params.get("charset", "utf-8") in ("utf-8", "utf8")


async def read_capped(upstream: aiohttp.ClientResponse, cap: int) -> bytes:
    if upstream.content_length is not None and upstream.content_length > cap:
        raise FailClosed("too_large")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in upstream.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise FailClosed("too_large")
            chunks.append(chunk)
    except aiohttp.ClientPayloadError:
        raise FailClosed("truncated") from None
    except TimeoutError:
        raise FailClosed("upstream_body_timeout") from None
    return b"".join(chunks)


def _fail(ex: Exchange, reason: str, status: int = 502) -> web.Response:
    ex.deny("fail_closed", reason)
    log.warning("route %s: response withheld (%s)", ex.route.name if ex.route else "-", reason)
    return problem(status, ex.request_id, _GENERIC)


async def filter_response(ex: Exchange, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    assert ex.route is not None
    limits = ex.runtime.config.limits
    if upstream.status == 206:
        return _fail(ex, "partial_content")
    try:
        raw = await read_capped(upstream, limits.max_response_body)
        kind, params = media_type(upstream.headers.get("Content-Type"))
        if raw and kind in ex.route.config.pass_through:
            return _respond(ex, upstream, raw, keep_encoding=True)
        # Stacked codings may arrive on several header lines; all of them count.
        coding = ", ".join(upstream.headers.getall("Content-Encoding", [])) or None
        body = decode_content(raw, coding, max_size=limits.max_response_body)
        if not body:
            return _respond(ex, upstream, b"")
        if not is_json(kind, params):
            if upstream.status >= 400:
                # An error page or stack trace: keep the status, replace the body.
                ex.deny("upstream_error", "non_json_error_body")
                return problem(upstream.status, ex.request_id, "The upstream service failed.")
            raise FailClosed("not_json")
        masked = ex.runtime.mask_body(ex, body)
    except FailClosed as exc:
        return _fail(ex, exc.reason)
    except ContentCodingError as exc:
        return _fail(ex, exc.reason)
    except JsonError as exc:
        return _fail(ex, exc.reason)
    if masked is None:
        return _fail(ex, "policy_unavailable")
    refusal = await account(ex)
    if refusal is not None:
        return refusal
    return _respond(ex, upstream, masked)


def _respond(
    ex: Exchange, upstream: aiohttp.ClientResponse, body: bytes, *, keep_encoding: bool = False
) -> web.Response:
    assert ex.route is not None
    drop = [h for h in _DROPPED_RESPONSE_HEADERS if not (keep_encoding and h == "Content-Encoding")]
    headers = client_response_headers(
        upstream.headers,
        upstream_url=ex.route.upstream.url,
        gateway_origin=ex.gateway_origin(),
        drop=drop,
    )
    headers["Cache-Control"] = "no-store"
    # For HEAD, aiohttp sends these headers (Content-Length of the masked body) and no body.
    return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
