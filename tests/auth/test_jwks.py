"""JwksSource against a real HTTP server: caching, rate limit, resilience, caps."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from gateway.auth.jwks import JwksFetchError, JwksSource, fetch_jwks
from gateway.auth.keys import KeysUnavailable


@pytest.fixture
def make_source(session: aiohttp.ClientSession, clock: Any) -> Any:
    made: list[JwksSource] = []

    def make(url: str, **kwargs: Any) -> JwksSource:
        options: dict[str, Any] = {
            "cache_ttl": 300,
            "min_refresh_interval": 30,
            "timeout": 2.0,
            "session": session,
            "monotonic": clock.monotonic,
        }
        options.update(kwargs)
        source = JwksSource(url, ["RS256", "ES256"], **options)
        made.append(source)
        return source

    return make


async def test_fetches_once_and_caches(make_source: Any, jwks_server: Any) -> None:
    source = make_source(jwks_server.url)
    for _ in range(10):
        found = await source.lookup("rsa-1", "RS256")
        assert [k.kid for k in found.keys] == ["rsa-1"]
    assert jwks_server.fetches == 1
    assert source.age() == 0


async def test_concurrent_cold_lookups_share_one_fetch(make_source: Any, jwks_server: Any) -> None:
    source = make_source(jwks_server.url)
    results = await asyncio.gather(*(source.lookup("ec-1", "ES256") for _ in range(100)))
    assert all(r.keys for r in results)
    assert jwks_server.fetches == 1


async def test_stale_set_is_served_while_refreshing(
    make_source: Any, jwks_server: Any, rsa_key2: Any, clock: Any
) -> None:
    source = make_source(jwks_server.url)
    await source.lookup("rsa-1", "RS256")
    jwks_server.keys = [rsa_key2.jwk("rsa-2")]
    clock.advance(300)
    assert (await source.lookup("rsa-1", "RS256")).keys  # stale but served
    await source.wait_idle()
    assert jwks_server.fetches == 2
    assert not (await source.lookup("rsa-1", "RS256")).keys
    assert (await source.lookup("rsa-2", "RS256")).keys


async def test_unknown_kid_refetches_at_most_once_per_interval(
    make_source: Any, jwks_server: Any, rsa_key2: Any, clock: Any
) -> None:
    source = make_source(jwks_server.url)
    await source.lookup("rsa-1", "RS256")
    jwks_server.keys.append(rsa_key2.jwk("rsa-2"))
    clock.advance(29)
    # Too soon after the last fetch: the new kid is not looked for yet.
    assert not (await source.lookup("rsa-2", "RS256")).keys
    assert jwks_server.fetches == 1
    clock.advance(1)
    assert (await source.lookup("rsa-2", "RS256")).keys
    assert jwks_server.fetches == 2


async def test_flood_of_random_kids(make_source: Any, jwks_server: Any, clock: Any) -> None:
    source = make_source(jwks_server.url)
    await asyncio.gather(*(source.lookup(f"kid-{i}", "RS256") for i in range(1000)))
    for i in range(1000):
        await source.lookup(f"other-{i}", "RS256")
    assert jwks_server.fetches == 1
    clock.advance(30)
    await asyncio.gather(*(source.lookup(f"late-{i}", "RS256") for i in range(1000)))
    assert jwks_server.fetches == 2


@pytest.mark.parametrize(
    "mode", ["down", "garbage", "not_jwks", "huge", "huge_chunked", "redirect"]
)
async def test_bad_refetch_keeps_last_good_set(
    make_source: Any, jwks_server: Any, clock: Any, mode: str
) -> None:
    source = make_source(jwks_server.url)
    await source.lookup("rsa-1", "RS256")
    good = source.keys
    jwks_server.mode = mode
    clock.advance(300)
    assert await source.refresh()
    assert source.keys is good
    assert source.stats.failures == 1 and source.stats.last_error
    assert (await source.lookup("rsa-1", "RS256")).keys
    assert jwks_server.redirected == 0  # redirects are never followed


async def test_set_without_usable_keys_is_not_taken(
    make_source: Any, jwks_server: Any, clock: Any, rsa_key: Any
) -> None:
    source = make_source(jwks_server.url)
    await source.lookup("rsa-1", "RS256")
    jwks_server.keys = [rsa_key.jwk("enc", use="enc"), {"kty": "oct", "k": "c2VjcmV0"}]
    clock.advance(30)
    assert not (await source.lookup("nope", "RS256")).keys
    assert source.stats.fetches == 2 and source.stats.failures == 1
    assert (await source.lookup("rsa-1", "RS256")).keys


async def test_down_while_cold_raises_and_backs_off(
    make_source: Any, make_jwks_server: Any, clock: Any, rsa_key: Any
) -> None:
    server = await make_jwks_server()
    server.mode = "down"
    source = make_source(server.url)
    for _ in range(10):
        with pytest.raises(KeysUnavailable):
            await source.lookup("rsa-1", "RS256")
    assert server.fetches == 1
    clock.advance(30)
    server.mode, server.keys = "ok", [rsa_key.jwk("rsa-1")]
    assert (await source.lookup("rsa-1", "RS256")).keys


async def test_timeout(make_source: Any, jwks_server: Any) -> None:
    jwks_server.mode = "slow"
    source = make_source(jwks_server.url, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(KeysUnavailable):
        await source.lookup("rsa-1", "RS256")
    assert time.monotonic() - started < 2
    assert "within" in (source.stats.last_error or "")


async def test_size_cap(session: aiohttp.ClientSession, jwks_server: Any) -> None:
    for mode in ("huge", "huge_chunked"):
        jwks_server.mode = mode
        with pytest.raises(JwksFetchError, match="larger than"):
            await fetch_jwks(session, jwks_server.url, time_limit=2, max_bytes=64 * 1024)


async def test_fetch_refuses_non_200(session: aiohttp.ClientSession, jwks_server: Any) -> None:
    jwks_server.mode = "down"
    with pytest.raises(JwksFetchError, match="503"):
        await fetch_jwks(session, jwks_server.url, time_limit=2, max_bytes=1024)


async def test_unreachable_host(make_source: Any) -> None:
    source = make_source("http://127.0.0.1:1/jwks.json")
    with pytest.raises(KeysUnavailable):
        await source.lookup("x", "RS256")
    assert source.stats.failures == 1


async def test_own_session_when_none_given(jwks_server: Any, clock: Any) -> None:
    source = JwksSource(
        jwks_server.url,
        ["RS256"],
        cache_ttl=300,
        min_refresh_interval=30,
        timeout=2,
        monotonic=clock.monotonic,
    )
    assert (await source.lookup("rsa-1", "RS256")).keys
    await source.aclose()


async def test_is_current_tracks_the_published_keys(
    make_source: Any, jwks_server: Any, clock: Any, rsa_key2: Any
) -> None:
    source = make_source(jwks_server.url)
    found = await source.lookup("rsa-1", "RS256")
    fingerprint = found.keys[0].fingerprint
    assert source.is_current(fingerprint)
    jwks_server.keys = [rsa_key2.jwk("rsa-2")]
    clock.advance(300)
    assert source.is_current(fingerprint)  # stale answer; refresh started
    await source.wait_idle()
    assert not source.is_current(fingerprint)


async def test_aclose_cancels_a_running_refresh(
    make_source: Any, jwks_server: Any, clock: Any
) -> None:
    source = make_source(jwks_server.url)
    await source.lookup("rsa-1", "RS256")
    jwks_server.mode = "slow"
    clock.advance(300)
    await source.lookup("rsa-1", "RS256")
    await source.aclose()
    assert source.stats.failures == 0
