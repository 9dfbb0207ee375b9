"""Verification keys: parsing, the issuer's usable key set, static key sources.

Rules:

- A key is bound to exactly one algorithm (PyJWT's :class:`~jwt.PyJWK` holds
  one), and a key is *usable* only for algorithms in the issuer's allow-list
  that fit its type: RSA -> RS*/PS*, EC P-256/P-384/P-521 -> ES256/ES384/ES512,
  OKP Ed25519/Ed448 -> EdDSA, oct -> HS*. A JWK that names its own ``alg`` is
  usable for that algorithm only. Everything else is skipped, never guessed.
- JWKs marked for encryption (``use`` other than ``sig``, ``key_ops`` without
  ``verify``), carrying private material (``d``), with a non-string ``kid`` or
  RSA keys under 2048 bits are skipped.
- ``kid`` is only ever a dictionary key: it is never a path, URL or query, so
  ``../../etc/passwd`` is just a kid nobody has.
- Single-key sources (``public_key_file``, ``hmac_secret_env``) ignore the
  token's ``kid``: there is one key to try.
- Each key has a fingerprint (algorithm + public key bytes, or a hash of the
  secret) that survives a JWKS refetch, so the verified-token cache can ask
  "is the key that verified this token still published?".

Load-time problems raise :class:`KeySourceError` naming the config key
(``jwks_file``, ``hmac_secret_env`` ...) and never the secret.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError
from jwt.utils import base64url_encode

from gateway.auth.config import HMAC_ALGORITHMS

MIN_RSA_BITS = 2048
# A JWKS with more keys than this is not a real IdP's; bounds work per document.
MAX_JWKS_KEYS = 100

# algorithm -> (kty, allowed curves or None)
_ALGORITHM_KEY_TYPES: dict[str, tuple[str, frozenset[str] | None]] = {
    **{a: ("RSA", None) for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    **{a: ("oct", None) for a in HMAC_ALGORITHMS},
}
_EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


class KeySourceError(ValueError):
    """A key source could not be loaded; ``key`` is the config key to blame."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    algorithm: str
    jwk: PyJWK
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Lookup:
    """Keys to try for a token. ``kid_known``: the kid exists, just not for this alg."""

    keys: tuple[VerificationKey, ...]
    kid_known: bool


class KeySet:
    """An immutable set of usable keys, indexed by (kid, algorithm)."""

    __slots__ = ("_all", "_by_kid", "_fingerprints", "_use_kid")

    def __init__(self, keys: Iterable[VerificationKey], *, use_kid: bool = True) -> None:
        self._all = tuple(keys)
        self._use_kid = use_kid
        self._by_kid: dict[str, tuple[VerificationKey, ...]] = {}
        for k in self._all:
            if k.kid is not None:
                self._by_kid[k.kid] = (*self._by_kid.get(k.kid, ()), k)
        self._fingerprints = frozenset(k.fingerprint for k in self._all)

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[VerificationKey]:
        return iter(self._all)

    def has_fingerprint(self, fingerprint: str) -> bool:
        return fingerprint in self._fingerprints

    def lookup(self, kid: str | None, algorithm: str) -> Lookup:
        if not self._use_kid:
            return Lookup(tuple(k for k in self._all if k.algorithm == algorithm), True)
        if kid is None:
            # No kid: every key for the algorithm is a candidate (single-key IdPs omit kid).
            return Lookup(tuple(k for k in self._all if k.algorithm == algorithm), False)
        named = self._by_kid.get(kid)
        if named is None:
            return Lookup((), False)
        return Lookup(tuple(k for k in named if k.algorithm == algorithm), True)


class KeySource(Protocol):
    """Where an issuer's keys come from. :class:`gateway.auth.jwks.JwksSource` is the other one."""

    async def lookup(self, kid: str | None, algorithm: str) -> Lookup:
        """Keys to try; may fetch. Raises :class:`KeysUnavailable` when there are none at all."""
        ...

    def is_current(self, fingerprint: str) -> bool:
        """Whether a key with this fingerprint is still in the current key set."""
        ...


class KeysUnavailable(Exception):
    """No key set could be loaded yet (JWKS never fetched successfully)."""


class StaticKeySource:
    """Keys loaded once from a file or the environment."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys

    async def lookup(self, kid: str | None, algorithm: str) -> Lookup:
        return self.keys.lookup(kid, algorithm)

    def is_current(self, fingerprint: str) -> bool:
        return self.keys.has_fingerprint(fingerprint)


# --- parsing -------------------------------------------------------------------------


def _public_fingerprint(algorithm: str, key: Any) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"{algorithm}:{hashlib.sha256(der).hexdigest()}"


def _fits(algorithm: str, kty: str, crv: str | None) -> bool:
    want = _ALGORITHM_KEY_TYPES.get(algorithm)
    if want is None or want[0] != kty:
        return False
    return want[1] is None or crv in want[1]


def _check_public(jwk: PyJWK) -> None:
    key = jwk.key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key shorter than {MIN_RSA_BITS} bits")
        return
    if isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return
    raise ValueError("not a public key")


def parse_jwk(
    data: Mapping[str, Any], algorithms: Collection[str]
) -> tuple[list[VerificationKey], str | None]:
    """One JWK -> its usable keys (one per fitting algorithm), or a reason it was skipped."""
    kty = data.get("kty")
    kid = data.get("kid")
    if not isinstance(kty, str):
        return [], "no kty"
    if kid is not None and not isinstance(kid, str):
        return [], "kid is not a string"
    use = data.get("use")
    if use is not None and use != "sig":
        return [], "not a signature key (use)"
    ops = data.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return [], "not a verification key (key_ops)"
    if kty == "oct":
        return [], "symmetric keys are never taken from a key set"
    if "d" in data:
        return [], "carries private key material"
    own_alg = data.get("alg")
    crv = data.get("crv")
    if (own_alg is not None and not isinstance(own_alg, str)) or (
        crv is not None and not isinstance(crv, str)
    ):
        return [], "alg/crv is not a string"
    if own_alg is not None:
        candidates = [own_alg] if own_alg in algorithms else []
    else:
        candidates = list(algorithms)
    candidates = [a for a in candidates if _fits(a, kty, crv)]
    if not candidates:
        return [], "kty/alg not in the issuer's algorithms"
    out: list[VerificationKey] = []
    for alg in candidates:
        try:
            jwk = PyJWK(dict(data), algorithm=alg)
            _check_public(jwk)
        except Exception as exc:  # untrusted input from the network: any failure = unusable
            return [], f"unusable: {type(exc).__name__}"
        out.append(VerificationKey(kid, alg, jwk, _public_fingerprint(alg, jwk.key)))
    return out, None


def parse_jwks(document: Any, algorithms: Collection[str]) -> tuple[KeySet, list[str]]:
    """A JWKS document -> its usable keys and notes on skipped ones.

    Raises ValueError when the document is not a JWKS or has no usable key: a
    refetch that returns such a document must not replace a good key set.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWKS document (expected {"keys": [...]})')
    entries = document["keys"]
    if len(entries) > MAX_JWKS_KEYS:
        raise ValueError(f"JWKS has more than {MAX_JWKS_KEYS} keys")
    keys: list[VerificationKey] = []
    notes: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            notes.append(f"keys[{i}]: not an object")
            continue
        usable, why = parse_jwk(entry, algorithms)
        if why:
            notes.append(f"keys[{i}]: {why}")
        keys.extend(usable)
    if not keys:
        raise ValueError("JWKS has no key usable with the issuer's algorithms")
    return KeySet(keys), notes


def _reject_constants(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def load_json(data: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity."""
    return json.loads(data.decode("utf-8"), parse_constant=_reject_constants)


def load_jwks_file(path: Path, algorithms: Collection[str]) -> KeySet:
    try:
        document = load_json(path.read_bytes())
    except OSError as exc:
        raise KeySourceError("jwks_file", f"cannot read the file: {exc.strerror}") from None
    except (ValueError, RecursionError):
        raise KeySourceError("jwks_file", "the file is not valid JSON") from None
    try:
        keys, _ = parse_jwks(document, algorithms)
    except ValueError as exc:
        raise KeySourceError("jwks_file", str(exc)) from None
    return keys


def _public_key_algorithms(
    key: Any, algorithms: Collection[str]
) -> list[tuple[str, dict[str, Any]]]:
    """(algorithm, JWK dict) for each allowed algorithm that fits a cryptography public key."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeySourceError("public_key_file", f"RSA key shorter than {MIN_RSA_BITS} bits")
        kty, crv, jwk = "RSA", None, RSAAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        kty, crv = "EC", _EC_CURVES.get(key.curve.name)
        jwk = ECAlgorithm.to_jwk(key, as_dict=True) if crv else {}
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        kty = "OKP"
        crv = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
        jwk = OKPAlgorithm.to_jwk(key, as_dict=True)
    else:
        raise KeySourceError("public_key_file", "unsupported key type")
    return [(a, jwk) for a in algorithms if _fits(a, kty, crv)]


def load_public_key_file(path: Path, algorithms: Collection[str]) -> KeySet:
    """A PEM public key or certificate -> a single-key set (the token's kid is ignored)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeySourceError("public_key_file", f"cannot read the file: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        raise KeySourceError(
            "public_key_file", "the file holds a private key; give the gateway the public key only"
        )
    try:
        if b"BEGIN CERTIFICATE" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeySourceError("public_key_file", "not a PEM public key or certificate") from None
    fitting = _public_key_algorithms(key, algorithms)
    if not fitting:
        raise KeySourceError(
            "public_key_file", "the key's type does not fit any of the issuer's algorithms"
        )
    return KeySet(
        (
            VerificationKey(None, alg, PyJWK(jwk, algorithm=alg), _public_fingerprint(alg, key))
            for alg, jwk in fitting
        ),
        use_kid=False,
    )


_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


def hmac_key_set(secret: bytes, algorithms: Collection[str]) -> KeySet:
    """An HMAC secret -> a single-key set, one entry per allowed HS algorithm.

    RFC 7518 §3.2: the key must be at least as long as the hash output.
    """
    need = max(_HMAC_MIN_BYTES[a] for a in algorithms)
    if len(secret) < need:
        raise KeySourceError(
            "hmac_secret_env", f"the secret must be at least {need} bytes for these algorithms"
        )
    try:
        # PyJWT refuses secrets that look like PEM/SSH/JWK keys: a public key is never a secret.
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except PyJWTError:
        raise KeySourceError(
            "hmac_secret_env", "the secret looks like a public key or JWK, not a random secret"
        ) from None
    k = base64url_encode(secret).decode()
    fp = "hmac:" + hashlib.sha256(b"gateway-hmac-fingerprint\0" + secret).hexdigest()
    return KeySet(
        (
            VerificationKey(None, a, PyJWK({"kty": "oct", "k": k}, algorithm=a), f"{a}:{fp}")
            for a in algorithms
        ),
        use_kid=False,
    )


def hmac_secret_from_env(name: str, env: Mapping[str, str]) -> bytes:
    value = env.get(name)
    if value is None or value == "":
        raise KeySourceError("hmac_secret_env", f"environment variable {name} is not set")
    return value.encode("utf-8")
