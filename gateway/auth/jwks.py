"""A JWKS endpoint as a key source: cached, rate-limited, resilient.

Theory of operation. The source holds the last good :class:`KeySet` and the
times of the last successful fetch and of the last attempt (monotonic clock).

- Cold (no key set yet): the request waits for a fetch. If that fails, the
  token is refused with ``jwks_unavailable`` until a later attempt succeeds.
- Stale (older than ``jwks_cache_ttl``): a refresh starts in the background and
  the request is served from the current set (stale-while-revalidate), so an
  IdP outage never adds latency to requests that carry known keys.
- Unknown ``kid`` (or no key for the token's algorithm): the request waits for
  a refetch, then looks again. This is how a key rotation is picked up.
- Rate limit: a new fetch starts only when the last *attempt* is at least
  ``jwks_min_refresh_interval`` old, whatever its cause (cold, stale, unknown
  kid). Concurrent callers share the one in-flight fetch. So a flood of tokens
  with random kids costs the IdP at most one fetch per interval, and a down IdP
  is retried at that pace, not per request.
- A fetch that fails (network, timeout, non-200, body over the size cap, not
  JSON, no usable key) changes nothing: the last good key set keeps serving.
- Fetching never follows redirects (a redirect could downgrade to http or
  leave the IdP); the body is read with a hard size cap, after decompression.

The token's ``jku``/``x5u`` headers never reach this module: the only URL ever
fetched is the one in ``gateway.yaml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.auth.keys import KeySet, KeysUnavailable, Lookup, load_json, parse_jwks

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1024 * 1024
_CHUNK = 64 * 1024


class JwksFetchError(Exception):
    """A fetch failed; the message is safe to log (no body content)."""


def _safe_url(url: str) -> str:
    # Log scheme, host and path only: a query string could carry a credential.
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc.rpartition('@')[2]}{p.path}"


async def fetch_jwks(
    session: aiohttp.ClientSession, url: str, *, time_limit: float, max_bytes: int
) -> Any:
    """GET ``url`` and return the parsed JSON; raise :class:`JwksFetchError`."""
    body = bytearray()
    try:
        async with session.get(
            url,
            timeout=aiohttp.ClientTimeout(total=time_limit),
            allow_redirects=False,
            headers={"Accept": "application/json, application/jwk-set+json"},
        ) as resp:
            if resp.status != 200:
                raise JwksFetchError(f"HTTP status {resp.status}")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise JwksFetchError(f"body larger than {max_bytes} bytes")
            async for chunk in resp.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise JwksFetchError(f"body larger than {max_bytes} bytes")
    except TimeoutError:
        raise JwksFetchError(f"no complete answer within {time_limit:g} s") from None
    except aiohttp.ClientError as exc:
        raise JwksFetchError(f"request failed: {type(exc).__name__}") from None
    try:
        return load_json(bytes(body))
    except (ValueError, RecursionError):
        raise JwksFetchError("body is not valid JSON") from None


@dataclass(slots=True)
class JwksStats:
    fetches: int = 0
    failures: int = 0
    last_error: str | None = None


class JwksSource:
    """Keys from a JWKS URL (implements :class:`gateway.auth.keys.KeySource`)."""

    def __init__(
        self,
        url: str,
        algorithms: Collection[str],
        *,
        cache_ttl: float,
        min_refresh_interval: float,
        timeout: float,
        max_bytes: int = DEFAULT_MAX_BYTES,
        session: aiohttp.ClientSession | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.algorithms = tuple(algorithms)
        self.cache_ttl = cache_ttl
        self.min_refresh_interval = min_refresh_interval
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.stats = JwksStats()
        self._session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._monotonic = monotonic
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._last_attempt: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def settings(self) -> tuple[Any, ...]:
        """Everything that defines this source; equal settings may share one across reloads."""
        return (self.url, self.algorithms, self.cache_ttl, self.min_refresh_interval, self.timeout)

    @property
    def keys(self) -> KeySet | None:
        return self._keys

    def age(self) -> float | None:
        """Seconds since the last successful fetch, or None if there never was one."""
        return None if self._keys is None else self._monotonic() - self._fetched_at

    # --- KeySource -------------------------------------------------------------------

    async def lookup(self, kid: str | None, algorithm: str) -> Lookup:
        now = self._monotonic()
        if self._keys is None:
            if self._in_flight() or self._may_fetch(now):
                await self._refresh()
            if self._keys is None:
                raise KeysUnavailable(self.stats.last_error or "no key set loaded")
        elif now - self._fetched_at >= self.cache_ttl and self._may_fetch(now):
            self._start_refresh()
        keys = self._keys
        found = keys.lookup(kid, algorithm)
        if not found.keys and (self._in_flight() or self._may_fetch(now)):
            await self._refresh()
            if self._keys is not keys:
                found = self._keys.lookup(kid, algorithm)
        return found

    def is_current(self, fingerprint: str) -> bool:
        now = self._monotonic()
        stale = self._keys is not None and now - self._fetched_at >= self.cache_ttl
        if stale and self._may_fetch(now):
            self._start_refresh()
        return self._keys is not None and self._keys.has_fingerprint(fingerprint)

    # --- refresh ---------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Fetch now unless rate-limited (joins an in-flight fetch); True if keys are loaded."""
        if self._in_flight() or self._may_fetch(self._monotonic()):
            await self._refresh()
        return self._keys is not None

    async def wait_idle(self) -> None:
        """Wait for an in-flight background refresh (tests, graceful shutdown)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    def _in_flight(self) -> bool:
        return self._task is not None and not self._task.done()

    def _may_fetch(self, now: float) -> bool:
        return self._last_attempt is None or now - self._last_attempt >= self.min_refresh_interval

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._fetch_once())
        return self._task

    async def _refresh(self) -> None:
        # shield: a caller that goes away (client disconnect) must not cancel the
        # fetch other callers are waiting for.
        await asyncio.shield(self._start_refresh())

    def _client(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        if self._own_session is None or self._own_session.closed:
            self._own_session = aiohttp.ClientSession()
        return self._own_session

    async def _fetch_once(self) -> None:
        self._last_attempt = self._monotonic()
        self.stats.fetches += 1
        try:
            document = await fetch_jwks(
                self._client(), self.url, time_limit=self.timeout, max_bytes=self.max_bytes
            )
            keys, notes = parse_jwks(document, self.algorithms)
        except (JwksFetchError, ValueError) as exc:
            self._failed(str(exc))
            return
        except Exception as exc:  # a background task must never die silently
            log.exception("JWKS fetch from %s failed unexpectedly", _safe_url(self.url))
            self._failed(type(exc).__name__)
            return
        for note in notes:
            log.info("JWKS %s: skipped %s", _safe_url(self.url), note)
        self._keys = keys
        self._fetched_at = self._monotonic()
        self.stats.last_error = None

    def _failed(self, why: str) -> None:
        self.stats.failures += 1
        self.stats.last_error = why
        serving = "keeping the last good key set" if self._keys else "no keys loaded"
        log.warning("JWKS fetch from %s failed: %s; %s", _safe_url(self.url), why, serving)
