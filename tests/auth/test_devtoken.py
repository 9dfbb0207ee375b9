"""Development tokens: defaults, overrides, and acceptance by the authenticator."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from gateway.auth.config import AuthConfig
from gateway.auth.devtoken import (
    dev_issuer,
    generate_dev_secret,
    mint_for_config,
    mint_token,
)

ISSUER = "https://idp.example.com/"
AUDIENCE = "customer-gateway"
NOW = 1_700_000_000


def test_generate_dev_secret() -> None:
    a, b = generate_dev_secret(), generate_dev_secret()
    assert a != b and len(a) >= 64 and a.decode("ascii").isprintable()


def test_defaults_are_filled_in() -> None:
    secret = generate_dev_secret()
    token = mint_token(
        {"sub": "t1", "clearance": "confidential"},
        secret,
        issuer=ISSUER,
        audience=AUDIENCE,
        now=NOW,
    )
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(
        token, secret, algorithms=["HS256"], audience=AUDIENCE, options={"verify_exp": False}
    )
    assert claims == {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": NOW,
        "exp": NOW + 3600,
        "sub": "t1",
        "clearance": "confidential",
    }


def test_given_claims_win() -> None:
    secret = generate_dev_secret()
    token = mint_token(
        {"exp": NOW + 60, "aud": ["x"]},
        secret,
        issuer=ISSUER,
        audience=AUDIENCE,
        lifetime=10,
        now=NOW,
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["exp"], claims["aud"]) == (NOW + 60, ["x"])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        mint_token({}, b"short", issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValueError, match="lifetime"):
        mint_token({}, generate_dev_secret(), issuer=ISSUER, audience=AUDIENCE, lifetime=0)


def _config() -> AuthConfig:
    return AuthConfig.model_validate(
        {
            "issuers": [
                {
                    "issuer": "https://real/",
                    "audience": "a",
                    "jwks_url": "https://real/jwks",
                    "algorithms": ["RS256"],
                },
                {
                    "issuer": "dev",
                    "audience": ["gw", "other"],
                    "hmac_secret_env": "DEV",
                    "algorithms": ["HS256"],
                },
            ]
        }
    )


def test_dev_issuer_is_the_first_hmac_issuer() -> None:
    picked = dev_issuer(_config())
    assert picked is not None and picked.issuer == "dev"
    only_rsa = AuthConfig.model_validate({"issuers": [_config().issuers[0].model_dump()]})
    assert dev_issuer(only_rsa) is None
    with pytest.raises(ValueError, match="hmac_secret_env"):
        mint_for_config(only_rsa, {})


async def test_minted_token_is_accepted(make_auth: Any, clock: Any) -> None:
    secret = generate_dev_secret().decode()
    config = _config()
    env = {"DEV": secret}
    token = mint_for_config(config, {"sub": "t1", "roles": "teller"}, env=env, now=clock.wall)
    auth = make_auth(auth={"issuers": [config.issuers[1].model_dump()]}, env=env)
    principal = await auth.authenticate([f"Bearer {token}"])
    assert (principal.subject, principal.level_name) == ("t1", "confidential")
    with pytest.raises(ValueError, match="DEV is not set"):
        mint_for_config(config, {}, env={})
