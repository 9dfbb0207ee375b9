"""Authenticator against the classic attacks: malformed and forged tokens, algorithm
confusion, embedded keys, tokens of one issuer passed as another's.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.devtoken import mint_token
from gateway.auth.verify import (
    Authenticator,
    AuthError,
    bearer_token,
    parse_token,
)

from .conftest import AUDIENCE, ISSUER, SECRET, T0, Claims, reason_of

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
