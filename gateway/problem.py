"""``application/problem+json`` responses (RFC 9457).

Every error the gateway produces is one of these, with the request id, and
with a fixed ``title`` per status: details never echo request data, tokens,
upstream bodies or upstream internals (addresses, exception text).
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

import orjson
from aiohttp import web

PROBLEM_JSON = "application/problem+json"


def problem_body(status: int, request_id: str, detail: str | None = None, **extra: object) -> bytes:
    body: dict[str, object] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body.update(extra)
    body["request_id"] = request_id
    return orjson.dumps(body)


def problem(
    status: int,
    request_id: str,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: object,
) -> web.Response:
    """A problem+json response; ``detail`` must be a fixed, data-free sentence."""
    resp = web.Response(
        status=status,
        body=problem_body(status, request_id, detail, **extra),
        headers=headers,
    )
    resp.content_type = PROBLEM_JSON
    return resp
