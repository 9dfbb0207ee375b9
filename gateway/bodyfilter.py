"""Body filter for routes with a policy (fail closed).

Until the masking engine is wired in, a policy route never relays upstream
bytes: it answers 502 with a generic problem+json.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.exchange import Exchange
from gateway.problem import problem


async def filter_response(ex: Exchange, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    ex.deny("fail_closed", "policy_engine_unavailable")
    return problem(502, ex.request_id, "The upstream response could not be delivered safely.")
