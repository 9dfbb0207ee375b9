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

8. A large body (over ``limits.stream_after``) whose records are an array under
   the root is masked record by record instead, in bounded memory, with the
   same bytes and the same fail-closed rules (``gateway.streaming``); a failure
   after the first byte aborts the connection mid-body.

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
from gateway.streaming import NotStreamable, RecordStream, StreamError
from gateway.upstream import UpstreamResponse

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


async def read_capped(upstream: UpstreamResponse, cap: int, head: bytes = b"") -> bytes:
    """The whole body (``head``: what was read of it already), or FailClosed."""
    if upstream.content_length is not None and upstream.content_length > cap:
        raise FailClosed("too_large")
    chunks: list[bytes] = [head]
    size = len(head)
    try:
        async for chunk in upstream.iter_any():
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


async def read_head(upstream: UpstreamResponse, size: int) -> tuple[list[bytes], bool]:
    """More than ``size`` bytes of the body as read (or all of it); True when that is all.

    Kept as the chunks read, so a body that goes on to stream is never held twice.
    """
    chunks: list[bytes] = []
    got = 0
    try:
        while got <= size:
            chunk = await upstream.readany()
            if not chunk:
                return chunks, True
            chunks.append(chunk)
            got += len(chunk)
    except aiohttp.ClientPayloadError:
        raise FailClosed("truncated") from None
    except TimeoutError:
        raise FailClosed("upstream_body_timeout") from None
    return chunks, False


def _streamer(ex: Exchange, upstream: UpstreamResponse) -> RecordStream | None:
    """A record stream when this response may be masked record by record (module docs)."""
    assert ex.route is not None and ex.route.policy is not None
    limits = ex.runtime.config.limits
    rules = ex.runtime.rules
    if not limits.stream_after or rules is None or not 200 <= upstream.status < 300:
        return None
    if upstream.headers.getall("Content-Encoding", []) or (
        upstream.content_length is not None and upstream.content_length <= limits.stream_after
    ):
        return None
    if not is_json(*media_type(upstream.headers.get("Content-Type"))):
        return None
    plan = rules.plan(ex.route.policy, ex.principal)
    spec = ex.route.rules.records or plan.records
    if spec is None:
        return None
    try:
        return RecordStream(plan, spec, max_value=limits.max_response_body)
    except NotStreamable:
        return None


async def filter_response(ex: Exchange, upstream: UpstreamResponse) -> web.StreamResponse:
    assert ex.route is not None
    limits = ex.runtime.config.limits
    if upstream.status == 206:
        return _fail(ex, "partial_content")
    try:
        stream = _streamer(ex, upstream)
        if stream is None:
            raw = await read_capped(upstream, limits.max_response_body)
        else:
            head, complete = await read_head(upstream, limits.stream_after)
            raw = b""
            if not complete:
                try:
                    return await _stream(ex, upstream, stream, head)
                except NotStreamable:  # not the shape the records path says: buffer it
                    raw = await read_capped(upstream, limits.max_response_body, b"".join(head))
            else:
                raw = b"".join(head)
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
    refusal = await account(ex, ex.records, ex.entities)
    if refusal is not None:
        ex.records, ex.entities = 0, []  # refused: the caller receives none of them
        return refusal
    return _respond(ex, upstream, masked)


class _Abort(Exception):
    """Stop a stream whose headers are sent: aiohttp then drops the connection
    mid-body, so the caller never gets a complete response (see gateway.stages.guard)."""


async def _stream(
    ex: Exchange, upstream: UpstreamResponse, stream: RecordStream, head: list[bytes]
) -> web.StreamResponse:
    """Mask record by record (gateway.streaming); account each part before sending it."""
    resp: web.StreamResponse | None = None
    records, entities = 0, []
    head_only = ex.request.method == "HEAD"

    async def emit(data: bytes) -> web.Response | None:
        nonlocal resp, records
        n, ids = stream.take_records()
        if n or ids:
            refusal = await account(ex, n, ids)
            if refusal is not None:
                if resp is None:
                    return refusal  # nothing sent yet: the usual 429
                raise _Abort  # account() recorded the refusal (rate_limited)
            records += n
            entities.extend(ids)
        if data and resp is None:
            resp = _stream_response(ex, upstream)
            await resp.prepare(ex.request)
        if data and resp is not None and not head_only:
            await resp.write(data)
        return None

    def stop(reason: str) -> web.StreamResponse:
        if resp is None:
            return _fail(ex, reason)
        ex.deny("fail_closed", reason)
        log.warning("route %s: stream aborted (%s)", ex.route.name if ex.route else "-", reason)
        raise _Abort(reason)

    try:
        # The head as it was read, chunk by chunk, each released once masked (only the
        # first feed may raise NotStreamable, and then the head is still whole).
        while head:
            refusal = await emit(stream.feed(head[0]))
            head.pop(0)
            if refusal is not None:
                return refusal
        async for chunk in upstream.iter_any():
            refusal = await emit(stream.feed(chunk))
            if refusal is not None:
                return refusal
        refusal = await emit(stream.finish())
        if refusal is not None:
            return refusal
    except StreamError as exc:
        return stop(exc.reason)
    except aiohttp.ClientPayloadError:
        return stop("truncated")
    except TimeoutError:
        return stop("upstream_body_timeout")
    finally:
        ex.records, ex.entities = records, entities
        ex.fields = stream.result().fields
    if resp is None:
        resp = _stream_response(ex, upstream)
        await resp.prepare(ex.request)
    await resp.write_eof()
    return resp


def _stream_response(ex: Exchange, upstream: UpstreamResponse) -> web.StreamResponse:
    assert ex.route is not None
    headers = client_response_headers(
        upstream.headers,
        upstream_url=ex.route.upstream.url,
        gateway_origin=ex.gateway_origin,
        drop=list(_DROPPED_RESPONSE_HEADERS),
    )
    headers["Cache-Control"] = "no-store"
    # Sent before the body is done, so the request id and quota headers go in now.
    headers[ex.runtime.config.request_id_header] = ex.request_id
    headers.update(ex.response_headers)
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    resp.enable_chunked_encoding()
    return resp


def _respond(
    ex: Exchange, upstream: UpstreamResponse, body: bytes, *, keep_encoding: bool = False
) -> web.Response:
    assert ex.route is not None
    drop = [h for h in _DROPPED_RESPONSE_HEADERS if not (keep_encoding and h == "Content-Encoding")]
    headers = client_response_headers(
        upstream.headers,
        upstream_url=ex.route.upstream.url,
        gateway_origin=ex.gateway_origin,
        drop=drop,
    )
    headers["Cache-Control"] = "no-store"
    # For HEAD, aiohttp sends these headers (Content-Length of the masked body) and no body.
    return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
