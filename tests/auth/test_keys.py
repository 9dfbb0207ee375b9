"""Key parsing: which keys are usable for which algorithm, and load-time errors."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.keys import (
    KeySourceError,
    Lookup,
    StaticKeySource,
    hmac_key_set,
    hmac_secret_from_env,
    load_jwks_file,
    load_public_key_file,
    parse_jwk,
    parse_jwks,
)

SECRET = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/"


def algs(keys: Any) -> set[tuple[str | None, str]]:
    return {(k.kid, k.algorithm) for k in keys}


def test_jwks_with_rsa_and_ec(rsa_key: Any, ec_key: Any) -> None:
    keys, notes = parse_jwks({"keys": [rsa_key.jwk("r"), ec_key.jwk("e")]}, ["RS256", "ES256"])
    assert algs(keys) == {("r", "RS256"), ("e", "ES256")} and notes == []
    assert keys.lookup("r", "RS256").keys and keys.lookup("r", "RS256").kid_known
    # Known kid, wrong algorithm: no key, but the kid exists (-> bad_algorithm).
    assert keys.lookup("r", "ES256") == Lookup((), True)


def test_jwk_own_alg_binds_the_key(rsa_key: Any) -> None:
    keys, _ = parse_jwks({"keys": [rsa_key.jwk("r", alg="PS256")]}, ["RS256", "PS256"])
    assert algs(keys) == {("r", "PS256")}
    with pytest.raises(ValueError, match="no key usable"):
        parse_jwks({"keys": [rsa_key.jwk("r", alg="RS512")]}, ["RS256"])


def test_jwk_without_alg_fits_every_allowed_algorithm_of_its_type(rsa_key: Any) -> None:
    keys, _ = parse_jwks({"keys": [rsa_key.jwk("r", alg=None)]}, ["RS256", "PS256", "ES256"])
    assert algs(keys) == {("r", "RS256"), ("r", "PS256")}


def test_ec_curve_must_match_the_algorithm() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    from jwt.algorithms import ECAlgorithm

    jwk: dict[str, Any] = ECAlgorithm.to_jwk(p384, as_dict=True)
    usable, why = parse_jwk({**jwk, "kid": "p384"}, ["ES256"])
    assert usable == [] and why
    usable, _ = parse_jwk({**jwk, "kid": "p384"}, ["ES256", "ES384"])
    assert [k.algorithm for k in usable] == ["ES384"]


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"use": "enc"}, "use"),
        ({"key_ops": ["encrypt"]}, "key_ops"),
        ({"kid": 5}, "kid"),
        ({"d": "AAAA"}, "private"),
        ({"kty": "oct", "k": "c2VjcmV0"}, "symmetric"),
        ({"kty": "XYZ"}, "not in the issuer"),
        ({"n": "!!!"}, "unusable"),
        ({"n": 5}, "unusable"),
        ({"alg": ["RS256"]}, "not a string"),
        ({"kty": "EC", "crv": {"x": 1}}, "not a string"),
    ],
)
def test_unusable_jwks_are_skipped(rsa_key: Any, extra: dict[str, Any], why: str) -> None:
    usable, reason = parse_jwk({**rsa_key.jwk("r"), **extra}, ["RS256", "HS256"])
    assert usable == [] and reason is not None and why in reason


def test_short_rsa_keys_are_skipped() -> None:
    from jwt.algorithms import RSAAlgorithm

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    usable, reason = parse_jwk(RSAAlgorithm.to_jwk(weak, as_dict=True), ["RS256"])
    assert usable == [] and reason


@pytest.mark.parametrize("document", [[], {"keys": {}}, {"keys": []}, {"keys": [1, "x"]}, "x"])
def test_not_a_usable_jwks(document: Any) -> None:
    with pytest.raises(ValueError):
        parse_jwks(document, ["RS256"])


def test_too_many_keys(rsa_key: Any) -> None:
    with pytest.raises(ValueError, match="more than"):
        parse_jwks({"keys": [rsa_key.jwk(str(i)) for i in range(101)]}, ["RS256"])


def test_kid_is_only_a_dictionary_key(rsa_key: Any) -> None:
    keys, _ = parse_jwks({"keys": [rsa_key.jwk("r")]}, ["RS256"])
    for kid in ("../../etc/passwd", "r/../r", "R", " r"):
        found = keys.lookup(kid, "RS256")
        assert found.keys == () and not found.kid_known


def test_fingerprints_survive_reparsing(rsa_key: Any, rsa_key2: Any) -> None:
    a, _ = parse_jwks({"keys": [rsa_key.jwk("r")]}, ["RS256"])
    b, _ = parse_jwks({"keys": [rsa_key.jwk("renamed")]}, ["RS256"])
    c, _ = parse_jwks({"keys": [rsa_key2.jwk("r")]}, ["RS256"])
    fp = next(iter(a)).fingerprint
    assert b.has_fingerprint(fp) and not c.has_fingerprint(fp)


async def test_single_key_sources_ignore_kid(rsa_key: Any, tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(rsa_key.public_pem())
    source = StaticKeySource(load_public_key_file(path, ["RS256", "PS256", "ES256"]))
    assert {k.algorithm for k in (await source.lookup("whatever", "RS256")).keys} == {"RS256"}
    assert (await source.lookup(None, "PS256")).keys
    found = await source.lookup("x", "ES256")
    assert found.keys == () and found.kid_known  # -> bad_algorithm, not unknown_kid


def _write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "key.pem"
    p.write_bytes(data)
    return p


def test_public_key_file_types(tmp_path: Path, ec_key: Any) -> None:
    assert {
        k.algorithm for k in load_public_key_file(_write(tmp_path, ec_key.public_pem()), ["ES256"])
    } == {"ES256"}
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = ed.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert len(load_public_key_file(_write(tmp_path, pem), ["EdDSA"])) == 1


def test_public_key_file_accepts_a_certificate(tmp_path: Path, rsa_key: Any) -> None:
    import datetime

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key.public)
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(rsa_key.private, hashes.SHA256())
    )
    path = _write(tmp_path, cert.public_bytes(serialization.Encoding.PEM))
    assert len(load_public_key_file(path, ["RS256"])) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a key", "not a PEM"),
        (b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n", "private key"),
    ],
)
def test_public_key_file_errors(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(KeySourceError, match=message) as info:
        load_public_key_file(_write(tmp_path, content), ["RS256"])
    assert info.value.key == "public_key_file"


def test_public_key_file_type_mismatch(tmp_path: Path, rsa_key: Any) -> None:
    with pytest.raises(KeySourceError, match="does not fit"):
        load_public_key_file(_write(tmp_path, rsa_key.public_pem()), ["ES256"])


def test_public_key_file_missing(tmp_path: Path) -> None:
    with pytest.raises(KeySourceError, match="cannot read") as info:
        load_public_key_file(tmp_path / "nope.pem", ["RS256"])
    assert info.value.key == "public_key_file"


def test_jwks_file_errors(tmp_path: Path) -> None:
    p = tmp_path / "jwks.json"
    p.write_text("{not json")
    with pytest.raises(KeySourceError, match="not valid JSON") as info:
        load_jwks_file(p, ["RS256"])
    assert info.value.key == "jwks_file"
    p.write_text('{"keys": []}')
    with pytest.raises(KeySourceError, match="no key usable"):
        load_jwks_file(p, ["RS256"])


def test_hmac_secret_rules(rsa_key: Any) -> None:
    keys = hmac_key_set(SECRET, ["HS256", "HS512"])
    assert {k.algorithm for k in keys} == {"HS256", "HS512"}
    with pytest.raises(KeySourceError, match="at least 64 bytes"):
        hmac_key_set(SECRET[:40], ["HS256", "HS512"])
    with pytest.raises(KeySourceError, match="looks like a public key"):
        hmac_key_set(rsa_key.public_pem(), ["HS256"])
    with pytest.raises(KeySourceError, match="looks like a public key"):
        hmac_key_set(b'{"kty": "oct", "k": "' + b"a" * 40 + b'"}', ["HS256"])


def test_hmac_secret_from_env() -> None:
    assert hmac_secret_from_env("S", {"S": "abc"}) == b"abc"
    for env in ({}, {"S": ""}):
        with pytest.raises(KeySourceError, match="environment variable S is not set"):
            hmac_secret_from_env("S", env)


_scalars: st.SearchStrategy[Any] = st.none() | st.booleans() | st.integers() | st.text(max_size=12)
jwk_values: st.SearchStrategy[Any] = (
    _scalars
    | st.lists(_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=3), _scalars, max_size=3)
)
jwk_keys = st.sampled_from(
    ["kty", "kid", "alg", "crv", "use", "key_ops", "n", "e", "x", "y", "d", "k"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(jwk_keys, jwk_values, max_size=8) | jwk_values, max_size=4))
def test_hostile_jwks_only_ever_raise_value_error(entries: list[Any]) -> None:
    with contextlib.suppress(ValueError):
        parse_jwks({"keys": entries}, ["RS256", "ES256", "EdDSA"])
