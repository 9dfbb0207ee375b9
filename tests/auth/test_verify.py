"""Authenticator: real RS256/ES256 keys and a real JWKS server; what a valid token is
(headers, time claims, key sources, configuration). Attacks: test_verify_attacks.py;
keys over time and the verified-token cache: test_verify_keys.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.auth.jwks import JwksSource
from gateway.auth.verify import (
    AUTH_FAILURE_REASONS,
    Authenticator,
    AuthError,
)
from gateway.errors import ConfigError

from .conftest import AUDIENCE, ISSUER, SECRET, T0, Claims, reason_of

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
