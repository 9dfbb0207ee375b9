"""The ``auth:`` section: the documented example loads; bad settings fail at load."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from gateway.auth.config import AuthConfig, IssuerConfig, check_jwks_url

PRODUCT_EXAMPLE = """
auth:
  leeway: 30
  issuers:
    - issuer: https://idp.example.com/
      audience: customer-gateway
      jwks_url: https://idp.example.com/.well-known/jwks.json  # or jwks_file / public_key_file / hmac_secret_env
      algorithms: [RS256, ES256]
  clearance: {claim: clearance, roles_claim: roles, roles: {risk_officer: secret, teller: confidential}}
"""  # noqa: E501 - verbatim from PRODUCT.md


def issuer(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "issuer": "https://idp.example.com/",
        "audience": "customer-gateway",
        "jwks_url": "https://idp.example.com/jwks.json",
        "algorithms": ["RS256"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def errors(section: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        AuthConfig.model_validate(section)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


def test_product_example_loads_as_written() -> None:
    config = AuthConfig.model_validate(yaml.safe_load(PRODUCT_EXAMPLE)["auth"])
    idp = config.issuers[0]
    assert idp.algorithms == ("RS256", "ES256") and idp.audiences == {"customer-gateway"}
    assert idp.key_source == "jwks_url"
    assert config.clearance.roles == {"risk_officer": "secret", "teller": "confidential"}


def test_defaults() -> None:
    config = AuthConfig.model_validate({"issuers": [issuer()]})
    idp = config.issuers[0]
    assert config.leeway == 30
    assert (idp.require_exp, idp.max_lifetime, idp.required_claims) == (True, None, ())
    assert (idp.jwks_cache_ttl, idp.jwks_min_refresh_interval, idp.jwks_timeout) == (300, 30, 5.0)
    assert (config.clearance.claim, config.clearance.roles_claim) == ("clearance", "roles")


def test_durations_accept_units() -> None:
    idp = IssuerConfig.model_validate(issuer(max_lifetime="8h", jwks_cache_ttl="5m"))
    assert (idp.max_lifetime, idp.jwks_cache_ttl) == (8 * 3600, 300)
    assert errors({"issuers": [issuer(max_lifetime="forever")]})[0][0][-1] == "max_lifetime"
    assert errors({"issuers": [issuer(max_lifetime=0)]})[0][0][-1] == "max_lifetime"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_none_is_refused_in_every_casing(alg: str) -> None:
    [(loc, msg)] = errors({"issuers": [issuer(algorithms=["RS256", alg])]})
    assert loc == ("issuers", 0, "algorithms", 1) and "never accepted" in msg


def test_unknown_algorithms() -> None:
    [(loc, msg)] = errors({"issuers": [issuer(algorithms=["rs256"])]})
    assert loc[-1] == 0 and "did you mean RS256" in msg
    [(_, msg)] = errors({"issuers": [issuer(algorithms=["XS999"])]})
    assert "unknown algorithm" in msg
    [(_, msg)] = errors({"issuers": [issuer(algorithms="RS256")]})
    assert "must be a list" in msg
    [(_, msg)] = errors({"issuers": [issuer(algorithms=[])]})
    assert "at least one" in msg


def test_hmac_and_asymmetric_never_mix() -> None:
    [(loc, msg)] = errors({"issuers": [issuer(algorithms=["RS256", "HS256"])]})
    assert loc == ("issuers", 0) and "HS256" in msg and "hmac_secret_env" in msg
    [(_, msg)] = errors(
        {"issuers": [issuer(jwks_url=None, hmac_secret_env="S", algorithms=["HS256", "RS256"])]}
    )
    assert "only HS256" in msg
    ok = IssuerConfig.model_validate(
        issuer(jwks_url=None, hmac_secret_env="S", algorithms=["HS256"])
    )
    assert ok.key_source == "hmac_secret_env"


def test_exactly_one_key_source() -> None:
    [(_, msg)] = errors({"issuers": [issuer(jwks_url=None)]})
    assert "exactly one of jwks_url, jwks_file, public_key_file, hmac_secret_env" in msg
    [(_, msg)] = errors({"issuers": [issuer(jwks_file="k.json")]})
    assert "got jwks_url, jwks_file" in msg


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/jwks.json",
        "http://127.0.0.1:8080/jwks.json",
        "http://127.9.9.9/jwks",
        "http://[::1]:9000/jwks",
        "http://localhost/jwks",
        "http://LOCALHOST:1/jwks",
    ],
)
def test_jwks_url_accepted(url: str) -> None:
    assert check_jwks_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com/jwks.json",
        "http://10.0.0.1/jwks",
        "http://localhost.evil.com/jwks",
        "http://[::2]/jwks",
        "ftp://idp.example.com/jwks",
        "https:///jwks",
        "idp.example.com/jwks",
        "https://idp.example.com:99999/jwks",
    ],
)
def test_jwks_url_refused(url: str) -> None:
    [(loc, msg)] = errors({"issuers": [issuer(jwks_url=url)]})
    assert loc[-1] == "jwks_url" and "jwks_url" in msg
    assert "example.com" not in msg  # messages never echo values


def test_unknown_keys_are_refused() -> None:
    assert errors({"issuers": [issuer()], "trusted_proxies": ["10.0.0.0/8"]})[0][0] == (
        "trusted_proxies",
    )
    assert errors({"issuers": [issuer(jwks_ttl=5)]})[0][0] == ("issuers", 0, "jwks_ttl")
    assert errors({"issuers": [issuer()], "clearance": {"role": {}}})[0][0] == ("clearance", "role")


def test_audience_required_and_non_empty() -> None:
    assert errors({"issuers": [issuer(audience=None)]})[0][0] == ("issuers", 0, "audience")
    for bad in ([], [""], ""):
        assert errors({"issuers": [issuer(audience=bad)]})[0][0][:3] == ("issuers", 0, "audience")
    both = IssuerConfig.model_validate(issuer(audience=["a", "b"]))
    assert both.audiences == {"a", "b"}


def test_issuers_are_unique_and_required() -> None:
    [(_, msg)] = errors({"issuers": [issuer(), issuer()]})
    assert "issuers[1].issuer" in msg
    assert errors({"issuers": []})[0][0] == ("issuers",)
    assert errors({})[0][0] == ("issuers",)


def test_other_field_rules() -> None:
    assert errors(
        {"issuers": [issuer(hmac_secret_env="not a name", jwks_url=None, algorithms=["HS256"])]}
    )
    assert errors({"issuers": [issuer(required_claims=[""])]})[0][0][-1] == "required_claims"
    assert errors({"issuers": [issuer(jwks_min_refresh_interval=0)]})
    assert errors({"issuers": [issuer(jwks_timeout=0)]})
    assert errors({"issuers": [issuer()], "leeway": -1})


def test_config_is_immutable() -> None:
    config = AuthConfig.model_validate({"issuers": [issuer()]})
    with pytest.raises(ValidationError):
        setattr(config, "leeway", 5)  # noqa: B010 - frozen model: assignment must fail
