"""Authenticator and its keys over time: JWKS rotation, an IdP that is down, unknown-kid
floods, and the verified-token cache.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import pytest

from gateway.auth.verify import (
    Authenticator,
    AuthError,
)

from .conftest import ISSUER, T0, Claims, reason_of

# --- JWKS behaviour through the authenticator -----------------------------------------


async def test_key_rotation(
    auth: Authenticator, jwks_server: Any, rsa_key: Any, rsa_key2: Any, claims: Claims, clock: Any
) -> None:
    old = rsa_key.sign(claims(), kid="rsa-1")
    assert (await auth.authenticate([f"Bearer {old}"])).subject == "alice"
    # The IdP publishes a new key; a token naming it triggers a refetch.
    jwks_server.keys = [rsa_key.jwk("rsa-1"), rsa_key2.jwk("rsa-2")]
    clock.advance(31)
    new = rsa_key2.sign(claims(), kid="rsa-2")
    assert (await auth.authenticate([f"Bearer {new}"])).subject == "alice"
    assert jwks_server.fetches == 2
    # The old key is withdrawn: once the cache TTL passes, the old token stops working,
    # even though it is in the verified-token cache.
    jwks_server.keys = [rsa_key2.jwk("rsa-2")]
    clock.advance(300)
    await auth.authenticate([f"Bearer {old}"])  # served stale while the refresh runs
    await auth.wait_idle()
    assert await reason_of(auth, [f"Bearer {old}"]) == "unknown_kid"
    fresh = rsa_key.sign(claims(sub="mallory"), kid="rsa-1")
    assert await reason_of(auth, [f"Bearer {fresh}"]) == "unknown_kid"
    assert (await auth.authenticate([f"Bearer {new}"])).subject == "alice"


async def test_idp_down_keeps_last_good_keys(
    auth: Authenticator, jwks_server: Any, rsa_key: Any, ec_key: Any, claims: Claims, clock: Any
) -> None:
    await auth.authenticate([f"Bearer {rsa_key.sign(claims(), kid='rsa-1')}"])
    for mode in ("down", "garbage", "not_jwks"):
        jwks_server.mode = mode
        clock.advance(400)
        token = ec_key.sign(claims(sub=mode), kid="ec-1")
        assert (await auth.authenticate([f"Bearer {token}"])).subject == mode
        await auth.wait_idle()
        token2 = rsa_key.sign(claims(sub=mode + "2"), kid="rsa-1")
        assert (await auth.authenticate([f"Bearer {token2}"])).subject == mode + "2"
    assert jwks_server.fetches == 4


async def test_idp_down_from_the_start_is_503(
    make_auth: Any, make_jwks_server: Any, issuer_for: Any, rsa_key: Any, claims: Claims, clock: Any
) -> None:
    server = await make_jwks_server()
    server.mode = "down"
    auth = make_auth([issuer_for(server.url)])
    token = rsa_key.sign(claims(), kid="rsa-1")
    with pytest.raises(AuthError) as info:
        await auth.authenticate([f"Bearer {token}"])
    assert (info.value.reason, info.value.status) == ("jwks_unavailable", 503)
    assert info.value.retry_after == 30 and info.value.www_authenticate is None
    assert not auth.ready()
    # Retried at the rate limit, not per request.
    for _ in range(20):
        with pytest.raises(AuthError):
            await auth.authenticate([f"Bearer {token}"])
    assert server.fetches == 1
    server.mode, server.keys = "ok", [rsa_key.jwk("rsa-1")]
    clock.advance(30)
    assert (await auth.authenticate([f"Bearer {token}"])).subject == "alice"
    assert auth.ready()


async def test_flood_of_unknown_kids_is_rate_limited(
    auth: Authenticator, jwks_server: Any, rsa_key: Any, claims: Claims, clock: Any
) -> None:
    tokens = [rsa_key.sign(claims(), kid=f"random-{i}") for i in range(1000)]
    results = await asyncio.gather(
        *(auth.authenticate([f"Bearer {t}"]) for t in tokens), return_exceptions=True
    )
    assert all(isinstance(r, AuthError) and r.reason == "unknown_kid" for r in results)
    for t in tokens:
        assert await reason_of(auth, [f"Bearer {t}"]) == "unknown_kid"
    assert jwks_server.fetches <= 2
    # After the interval one more fetch is allowed, and again only one.
    clock.advance(31)
    await asyncio.gather(
        *(auth.authenticate([f"Bearer {t}"]) for t in tokens[:200]), return_exceptions=True
    )
    assert jwks_server.fetches <= 3


async def test_prefetch_and_reuse_across_reload(
    make_auth: Any, jwks_server: Any, issuer_for: Any, rsa_key: Any, claims: Claims
) -> None:
    first = make_auth([issuer_for(jwks_server.url)])
    assert await first.prefetch() == []
    assert first.ready() and jwks_server.fetches == 1
    jwks_server.mode = "down"
    # A reload while the IdP is down keeps the keys when the JWKS settings are unchanged.
    second = make_auth([issuer_for(jwks_server.url)], previous=first)
    token = rsa_key.sign(claims(), kid="rsa-1")
    assert (await second.authenticate([f"Bearer {token}"])).subject == "alice"
    assert jwks_server.fetches == 1
    changed = make_auth([issuer_for(jwks_server.url, jwks_cache_ttl=60)], previous=first)
    assert await changed.prefetch() == [ISSUER]


# --- verified-token cache -------------------------------------------------------------


async def test_cache_hit_skips_signature_verification(
    auth: Authenticator, rsa_key: Any, claims: Claims, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = jwt.PyJWS.decode_complete

    def counting(self: jwt.PyJWS, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(jwt.PyJWS, "decode_complete", counting)
    token = rsa_key.sign(claims(), kid="rsa-1")
    first = await auth.authenticate([f"Bearer {token}"])
    for _ in range(50):
        assert await auth.authenticate([f"bearer {token}"]) is first
    assert calls == 1
    assert auth.stats.signature_checks == 1 and auth.stats.cache_hits == 50


async def test_cache_hit_still_honours_exp(
    auth: Authenticator, rsa_key: Any, claims: Claims, clock: Any
) -> None:
    token = rsa_key.sign(claims(exp=int(T0) + 60), kid="rsa-1")
    await auth.authenticate([f"Bearer {token}"])
    clock.advance(60 + 29)
    await auth.authenticate([f"Bearer {token}"])  # within leeway
    clock.advance(1)
    assert await reason_of(auth, [f"Bearer {token}"]) == "expired"
    assert await reason_of(auth, [f"Bearer {token}"]) == "expired"
    assert auth.stats.signature_checks == 2  # the second miss re-verified, then failed on exp


async def test_cache_is_bounded(
    make_auth: Any, jwks_server: Any, issuer_for: Any, rsa_key: Any, claims: Claims
) -> None:
    auth = make_auth([issuer_for(jwks_server.url)], cache_size=2)
    tokens = [rsa_key.sign(claims(sub=f"u{i}"), kid="rsa-1") for i in range(3)]
    for t in tokens:
        await auth.authenticate([f"Bearer {t}"])
    await auth.authenticate([f"Bearer {tokens[2]}"])
    assert auth.stats.signature_checks == 3
    await auth.authenticate([f"Bearer {tokens[0]}"])  # evicted: verified again
    assert auth.stats.signature_checks == 4


async def test_failures_are_not_cached(
    auth: Authenticator, attacker_key: Any, claims: Claims
) -> None:
    token = attacker_key.sign(claims(), kid="rsa-1")
    for _ in range(3):
        assert await reason_of(auth, [f"Bearer {token}"]) == "bad_signature"
    assert auth.stats.cache_hits == 0
