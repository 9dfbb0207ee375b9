"""Authenticator: real RS256/ES256 keys, a real JWKS server, the classic attacks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.devtoken import mint_token
from gateway.auth.jwks import JwksSource
from gateway.auth.verify import (
    AUTH_FAILURE_REASONS,
    REASONS,
    Authenticator,
    AuthError,
    bearer_token,
    parse_token,
)
from gateway.errors import ConfigError

ISSUER = "https://idp.example.com/"
AUDIENCE = "customer-gateway"
T0 = 1_700_000_000.0  # the fake clock's start (conftest.T0)
SECRET = b"s" * 20 + b"0123456789abcdefghijklmnopqrstuv"

Claims = Callable[..., dict[str, Any]]


async def reason_of(auth: Authenticator, values: list[str]) -> str:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(values)
    err = info.value
    # Nothing from the request is ever echoed: only the fixed description.
    assert str(err) == REASONS[err.reason].description
    for v in values:
        for part in v.split():
            if len(part) > 8:
                assert part not in str(err)
                assert part not in (err.www_authenticate or "")
    return err.reason


@pytest.fixture
async def auth(make_auth: Any, jwks_server: Any, issuer_for: Any) -> Authenticator:
    a: Authenticator = make_auth([issuer_for(jwks_server.url)])
    return a


# --- valid tokens ---------------------------------------------------------------------


async def test_valid_rs256(auth: Authenticator, rsa_key: Any, claims: Claims) -> None:
    token = rsa_key.sign(claims(department="risk"), kid="rsa-1")
    p = await auth.authenticate([f"Bearer {token}"])
    assert p.subject == "alice"
    assert (p.level, p.level_name) == (2, "confidential")
    assert p.claims["department"] == "risk"


async def test_valid_es256(auth: Authenticator, ec_key: Any, claims: Claims) -> None:
    token = ec_key.sign(claims(clearance="secret"), kid="ec-1")
    p = await auth.authenticate([f"Bearer {token}"])
    assert (p.subject, p.level_name) == ("alice", "secret")


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
async def test_scheme_is_case_insensitive(
    auth: Authenticator, rsa_key: Any, claims: Claims, scheme: str
) -> None:
    token = rsa_key.sign(claims(), kid="rsa-1")
    assert (await auth.authenticate([f"{scheme} {token}"])).subject == "alice"


async def test_token_without_kid_tries_keys_of_its_algorithm(
    auth: Authenticator, ec_key: Any, claims: Claims
) -> None:
    token = ec_key.sign(claims())
    assert (await auth.authenticate([f"Bearer {token}"])).subject == "alice"


async def test_roles_claim_through_authenticate(
    auth: Authenticator, rsa_key: Any, claims: Claims, drop: Any
) -> None:
    token = rsa_key.sign(claims(clearance=drop, roles=["teller", "risk_officer"]), kid="rsa-1")
    assert (await auth.authenticate([f"Bearer {token}"])).level_name == "secret"


async def test_aud_list_containing_ours(auth: Authenticator, rsa_key: Any, claims: Claims) -> None:
    token = rsa_key.sign(claims(aud=["other", AUDIENCE]), kid="rsa-1")
    assert (await auth.authenticate([f"Bearer {token}"])).subject == "alice"


# --- header handling ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "reason", "status", "challenge"),
    [
        ([], "missing_token", 401, "Bearer"),
        ([""], "missing_token", 401, "Bearer"),
        (["Bearer"], "missing_token", 401, "Bearer"),
        (["Bearer    "], "missing_token", 401, "Bearer"),
        (["Basic dXNlcjpwYXNz"], "unsupported_scheme", 401, "Bearer"),
        (["Bearer a.b.c extra"], "malformed_header", 400, 'error="invalid_request"'),
        (["Bearer x.y.z", "Bearer x.y.z"], "multiple_authorization", 400, "invalid_request"),
    ],
)
async def test_header_errors(
    auth: Authenticator, values: list[str], reason: str, status: int, challenge: str
) -> None:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(values)
    assert info.value.reason == reason
    assert info.value.status == status
    header = info.value.www_authenticate
    assert header is not None and header.startswith("Bearer")
    if challenge == "Bearer":
        assert header == "Bearer"
    else:
        assert challenge in header


async def test_invalid_token_challenge(auth: Authenticator) -> None:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(["Bearer a.b.c"])
    assert info.value.www_authenticate == (
        'Bearer error="invalid_token", error_description="The token is malformed"'
    )


def test_every_reason_has_a_label_safe_name() -> None:
    for reason in AUTH_FAILURE_REASONS:
        assert reason.isascii() and reason.replace("_", "").isalpha() and reason.islower()


# --- malformed tokens -----------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "a.b.c",
        "onesegment",
        "two.segments",
        "a.b.c.d.e",  # JWE-shaped
        "!!!.###.$$$",
        "eyJhbGciOiJSUzI1NiJ9.%%%.abc",
        "ééé.ééé.ééé",
        "x" * 20_000,
    ],
)
async def test_garbage_tokens(auth: Authenticator, token: str) -> None:
    assert await reason_of(auth, [f"Bearer {token}"]) == "malformed_token"


@pytest.mark.parametrize(
    "raw_payload",
    [
        b"[]",
        b'"string"',
        b'{"iss": "a", "iss": "b"}',  # duplicate members: a parser-differential trap
        b'{"iss": "https://idp.example.com/", "exp": NaN}',
        b"\xff\xfe not utf-8",
    ],
)
async def test_payload_must_be_a_clean_json_object(
    auth: Authenticator, forge_token: Any, raw_payload: bytes
) -> None:
    head = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"rsa-1"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(raw_payload).rstrip(b"=").decode()
    assert await reason_of(auth, [f"Bearer {head}.{body}.c2ln"]) == "malformed_token"


@pytest.mark.parametrize(
    "bad",
    [{"exp": "tomorrow"}, {"exp": True}, {"nbf": [1]}, {"iat": {"t": 1}}, {"exp": 10**400}],
)
async def test_numeric_dates_must_be_numbers(
    auth: Authenticator, rsa_key: Any, claims: Claims, bad: dict[str, Any]
) -> None:
    token = rsa_key.sign(claims(**bad), kid="rsa-1")
    assert await reason_of(auth, [f"Bearer {token}"]) == "malformed_token"


async def test_crit_header_is_refused(auth: Authenticator, rsa_key: Any, claims: Claims) -> None:
    token = rsa_key.sign(claims(), kid="rsa-1", headers={"crit": ["exp"], "exp": 1})
    assert await reason_of(auth, [f"Bearer {token}"]) == "malformed_token"


async def test_non_string_kid(auth: Authenticator, rsa_key: Any, claims: Claims) -> None:
    token = rsa_key.sign_raw({"alg": "RS256", "kid": 7}, claims())
    assert await reason_of(auth, [f"Bearer {token}"]) == "malformed_token"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=3))
def test_header_parsing_only_ever_raises_auth_error(values: list[str]) -> None:
    with contextlib.suppress(AuthError):
        parse_token(bearer_token(values))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.binary(max_size=60), st.binary(max_size=20))
def test_token_parsing_only_ever_raises_auth_error(h: bytes, p: bytes, s: bytes) -> None:
    parts = [base64.urlsafe_b64encode(x).rstrip(b"=").decode() for x in (h, p, s)]
    with contextlib.suppress(AuthError):
        parse_token(".".join(parts))


# --- algorithm attacks ----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_in_every_casing(
    auth: Authenticator, forge_token: Any, claims: Claims, alg: str
) -> None:
    unsigned = forge_token({"alg": alg, "typ": "JWT", "kid": "rsa-1"}, claims())
    assert await reason_of(auth, [f"Bearer {unsigned}"]) == "bad_algorithm"
    with_sig = forge_token({"alg": alg}, claims(), b"\x00" * 32)
    assert await reason_of(auth, [f"Bearer {with_sig}"]) == "bad_algorithm"


async def test_hs256_signed_with_the_rsa_public_key(
    make_auth: Any,
    jwks_server: Any,
    issuer_for: Any,
    rsa_key: Any,
    forge_token: Any,
    claims: Claims,
    tmp_path: Path,
) -> None:
    pem = rsa_key.public_pem()
    pem_file = tmp_path / "idp.pem"
    pem_file.write_bytes(pem)
    via_jwks = make_auth([issuer_for(jwks_server.url)])
    via_pem = make_auth(
        [
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "public_key_file": str(pem_file),
                "algorithms": ["RS256"],
            }
        ]
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    unsigned = forge_token(header, claims(clearance="secret")).rsplit(".", 1)[0]
    for secret in (pem, pem.strip(), rsa_key.public_pem().replace(b"\n", b"")):
        sig = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
        token = unsigned + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
        assert await reason_of(via_jwks, [f"Bearer {token}"]) == "bad_algorithm"
        assert await reason_of(via_pem, [f"Bearer {token}"]) == "bad_algorithm"


async def test_algorithm_outside_the_allow_list(
    make_auth: Any, jwks_server: Any, issuer_for: Any, rsa_key: Any, claims: Claims
) -> None:
    auth = make_auth([issuer_for(jwks_server.url, algorithms=["ES256"])])
    token = rsa_key.sign(claims(), kid="rsa-1")
    assert await reason_of(auth, [f"Bearer {token}"]) == "bad_algorithm"


async def test_key_is_bound_to_its_algorithm(
    make_auth: Any, jwks_server: Any, issuer_for: Any, rsa_key: Any, claims: Claims
) -> None:
    # The JWK says RS256; a PS256 token under its kid must not be checked with it.
    auth = make_auth([issuer_for(jwks_server.url, algorithms=["RS256", "PS256"])])
    token = rsa_key.sign(claims(), kid="rsa-1", alg="PS256")
    assert await reason_of(auth, [f"Bearer {token}"]) == "bad_algorithm"


async def test_tampered_payload_keeps_original_signature(
    auth: Authenticator, rsa_key: Any, claims: Claims, forge_token: Any
) -> None:
    good = rsa_key.sign(claims(), kid="rsa-1")
    head, _, sig = good.split(".")
    evil = forge_token({}, claims(clearance="secret")).split(".")[1]
    assert await reason_of(auth, [f"Bearer {head}.{evil}.{sig}"]) == "bad_signature"


async def test_signature_by_a_foreign_key(
    auth: Authenticator, attacker_key: Any, claims: Claims
) -> None:
    token = attacker_key.sign(claims(clearance="secret"), kid="rsa-1")
    assert await reason_of(auth, [f"Bearer {token}"]) == "bad_signature"


async def test_embedded_key_headers_are_never_followed(
    make_auth: Any,
    make_jwks_server: Any,
    jwks_server: Any,
    issuer_for: Any,
    attacker_key: Any,
    claims: Claims,
) -> None:
    evil = await make_jwks_server()
    evil.keys = [attacker_key.jwk("attacker"), attacker_key.jwk("rsa-1")]
    auth = make_auth([issuer_for(jwks_server.url)])
    for kid in ("attacker", "rsa-1", None):
        headers = {
            "jku": evil.url,
            "x5u": evil.url,
            "jwk": attacker_key.jwk("attacker"),
            "x5c": ["MIIB"],
        }
        token = attacker_key.sign(claims(clearance="secret"), kid=kid, headers=headers)
        reason = await reason_of(auth, [f"Bearer {token}"])
        assert reason in ("unknown_kid", "bad_signature")
    assert evil.fetches == 0


async def test_kid_path_traversal_is_just_an_unknown_kid(
    auth: Authenticator, jwks_server: Any, rsa_key: Any, claims: Claims
) -> None:
    for kid in ("../../etc/passwd", "/etc/passwd", "rsa-1/../rsa-1", "rsa-1\x00", "%2e%2e/"):
        token = rsa_key.sign(claims(), kid=kid)
        assert await reason_of(auth, [f"Bearer {token}"]) == "unknown_kid"


# --- issuer selection -----------------------------------------------------------------


async def test_unknown_issuer(auth: Authenticator, rsa_key: Any, claims: Claims, drop: Any) -> None:
    for iss in ("https://evil.example.com/", "https://idp.example.com", 42, ["x"], drop):
        token = rsa_key.sign(claims(iss=iss), kid="rsa-1")
        assert await reason_of(auth, [f"Bearer {token}"]) == "unknown_issuer"


async def test_token_of_one_issuer_signed_with_anothers_key(
    make_auth: Any, jwks_server: Any, issuer_for: Any, rsa_key: Any, claims: Claims
) -> None:
    # Issuer B shares nothing with A: A's key must not vouch for a token claiming B.
    other = make_auth(
        [
            issuer_for(jwks_server.url),
            {
                "issuer": "https://b.example.com/",
                "audience": AUDIENCE,
                "hmac_secret_env": "B_SECRET",
                "algorithms": ["HS256"],
            },
        ],
        env={"B_SECRET": SECRET.decode()},
    )
    token = rsa_key.sign(claims(iss="https://b.example.com/"), kid="rsa-1")
    assert await reason_of(other, [f"Bearer {token}"]) == "bad_algorithm"
    wrong_secret = jwt.encode(claims(iss="https://b.example.com/"), b"w" * 32, algorithm="HS256")
    assert await reason_of(other, [f"Bearer {wrong_secret}"]) == "bad_signature"
    good = mint_token(
        {"sub": "bob"}, SECRET, issuer="https://b.example.com/", audience=AUDIENCE, now=T0
    )
    assert (await other.authenticate([f"Bearer {good}"])).subject == "bob"
    # ... and B's secret never verifies a token claiming A.
    forged = mint_token({"sub": "bob"}, SECRET, issuer=ISSUER, audience=AUDIENCE, now=T0)
    assert await reason_of(other, [f"Bearer {forged}"]) == "bad_algorithm"


# --- time claims ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offsets", "reason"),
    [
        ({"exp": -31}, "expired"),
        ({"exp": -3600}, "expired"),
        ({"nbf": 31}, "not_yet_valid"),
        ({"iat": 31}, "issued_in_future"),
    ],
)
async def test_time_claims(
    auth: Authenticator, rsa_key: Any, claims: Claims, offsets: dict[str, int], reason: str
) -> None:
    values = {k: int(T0) + v for k, v in offsets.items()}
    token = rsa_key.sign(claims(**values), kid="rsa-1")
    assert await reason_of(auth, [f"Bearer {token}"]) == reason


@pytest.mark.parametrize("offsets", [{"exp": -29}, {"nbf": 29}, {"iat": 29}])
async def test_time_claims_within_leeway(
    auth: Authenticator, rsa_key: Any, claims: Claims, offsets: dict[str, int]
) -> None:
    values = {k: int(T0) + v for k, v in offsets.items()}
    token = rsa_key.sign(claims(**values), kid="rsa-1")
    assert (await auth.authenticate([f"Bearer {token}"])).subject == "alice"


async def test_exp_required_unless_the_issuer_says_otherwise(
    make_auth: Any, jwks_server: Any, issuer_for: Any, rsa_key: Any, claims: Claims, drop: Any
) -> None:
    token = rsa_key.sign(claims(exp=drop), kid="rsa-1")
    strict = make_auth([issuer_for(jwks_server.url)])
    assert await reason_of(strict, [f"Bearer {token}"]) == "missing_claim"
    lax = make_auth([issuer_for(jwks_server.url, require_exp=False)])
    assert (await lax.authenticate([f"Bearer {token}"])).subject == "alice"


@pytest.mark.parametrize("aud", ["other-service", ["a", "b"], [], 5, None, [5]])
async def test_wrong_audience(auth: Authenticator, rsa_key: Any, claims: Claims, aud: Any) -> None:
    token = rsa_key.sign(claims(aud=aud), kid="rsa-1")
    assert await reason_of(auth, [f"Bearer {token}"]) == "bad_audience"


async def test_max_lifetime(
    make_auth: Any, jwks_server: Any, issuer_for: Any, rsa_key: Any, claims: Claims, drop: Any
) -> None:
    auth = make_auth([issuer_for(jwks_server.url, max_lifetime="1h")])
    ok = rsa_key.sign(claims(exp=int(T0) + 3600), kid="rsa-1")
    assert (await auth.authenticate([f"Bearer {ok}"])).subject == "alice"
    long = rsa_key.sign(claims(exp=int(T0) + 3601), kid="rsa-1")
    assert await reason_of(auth, [f"Bearer {long}"]) == "lifetime_too_long"
    # Backdating iat does not help: exp - iat is what counts.
    back = rsa_key.sign(claims(iat=int(T0) - 7200, exp=int(T0) + 60), kid="rsa-1")
    assert await reason_of(auth, [f"Bearer {back}"]) == "lifetime_too_long"
    no_iat = rsa_key.sign(claims(iat=drop), kid="rsa-1")
    assert await reason_of(auth, [f"Bearer {no_iat}"]) == "missing_claim"


async def test_required_claims(
    make_auth: Any, jwks_server: Any, issuer_for: Any, rsa_key: Any, claims: Claims
) -> None:
    auth = make_auth([issuer_for(jwks_server.url, required_claims=["department", "sub"])])
    ok = rsa_key.sign(claims(department="risk"), kid="rsa-1")
    assert (await auth.authenticate([f"Bearer {ok}"])).claims["department"] == "risk"
    missing = rsa_key.sign(claims(), kid="rsa-1")
    assert await reason_of(auth, [f"Bearer {missing}"]) == "missing_claim"
    null = rsa_key.sign(claims(department=None), kid="rsa-1")
    assert await reason_of(auth, [f"Bearer {null}"]) == "missing_claim"


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


# --- other key sources ----------------------------------------------------------------


async def test_public_key_file_ignores_kid(
    make_auth: Any, rsa_key: Any, claims: Claims, tmp_path: Path
) -> None:
    (tmp_path / "idp.pem").write_bytes(rsa_key.public_pem())
    auth = make_auth(
        [
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "public_key_file": "idp.pem",
                "algorithms": ["RS256"],
            }
        ],
        base_dir=tmp_path,
    )
    for kid in (None, "anything"):
        token = rsa_key.sign(claims(), kid=kid)
        assert (await auth.authenticate([f"Bearer {token}"])).subject == "alice"


async def test_jwks_file(make_auth: Any, ec_key: Any, claims: Claims, tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [ec_key.jwk("ec-1")]}))
    auth = make_auth(
        [
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_file": str(tmp_path / "jwks.json"),
                "algorithms": ["ES256"],
            }
        ]
    )
    assert (await auth.authenticate([f"Bearer {ec_key.sign(claims(), kid='ec-1')}"])).subject
    assert await reason_of(auth, [f"Bearer {ec_key.sign(claims(), kid='ec-2')}"]) == "unknown_kid"


async def test_hmac_issuer(make_auth: Any, claims: Claims) -> None:
    auth = make_auth(
        [{"issuer": ISSUER, "audience": AUDIENCE, "hmac_secret_env": "S", "algorithms": ["HS256"]}],
        env={"S": SECRET.decode()},
    )
    good = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert (await auth.authenticate([f"Bearer {good}"])).subject == "alice"
    hs512 = jwt.encode(claims(), SECRET * 2, algorithm="HS512")
    assert await reason_of(auth, [f"Bearer {hs512}"]) == "bad_algorithm"


# --- construction errors --------------------------------------------------------------


def test_config_errors_name_file_and_key(tmp_path: Path) -> None:
    from gateway.auth.config import AuthConfig

    config = AuthConfig.model_validate(
        {
            "issuers": [
                {
                    "issuer": "a",
                    "audience": "x",
                    "hmac_secret_env": "NOPE",
                    "algorithms": ["HS256"],
                },
                {
                    "issuer": "b",
                    "audience": "x",
                    "public_key_file": "missing.pem",
                    "algorithms": ["RS256"],
                },
                {
                    "issuer": "c",
                    "audience": "x",
                    "hmac_secret_env": "SHORT",
                    "algorithms": ["HS512"],
                },
            ],
            "clearance": {"roles": {"teller": "Confidential"}},
        }
    )
    with pytest.raises(ConfigError) as info:
        Authenticator.from_config(
            config,
            ["public", "confidential"],
            file="gw.yaml",
            base_dir=tmp_path,
            env={"SHORT": "x" * 40},
        )
    text = [str(i) for i in info.value.issues]
    assert text[0] == (
        "gw.yaml: auth.issuers[0].hmac_secret_env: environment variable NOPE is not set"
    )
    assert text[1].startswith("gw.yaml: auth.issuers[1].public_key_file: cannot read the file")
    assert text[2] == (
        "gw.yaml: auth.issuers[2].hmac_secret_env: the secret must be at least 64 bytes "
        "for these algorithms"
    )
    assert text[3].startswith("gw.yaml: auth.clearance.roles.teller: unknown level")
    assert all("x" * 40 not in t for t in text)


def test_jwks_sources_are_not_fetched_at_construction() -> None:
    from gateway.auth.config import AuthConfig

    config = AuthConfig.model_validate(
        {
            "issuers": [
                {
                    "issuer": "a",
                    "audience": "x",
                    "jwks_url": "https://idp.invalid/jwks",
                    "algorithms": ["RS256"],
                }
            ]
        }
    )
    auth = Authenticator.from_config(config, ["public"])
    assert not auth.ready()
    assert auth.anonymous().subject is None
    source = auth.key_sources()["a"]
    assert isinstance(source, JwksSource) and source.stats.fetches == 0
