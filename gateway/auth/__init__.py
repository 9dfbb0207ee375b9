"""Identity: who is calling, at which clearance, from where and when.

- :mod:`~gateway.auth.config` — the ``auth:`` section of ``gateway.yaml``.
- :mod:`~gateway.auth.verify` — :class:`Authenticator`: bearer token -> Principal.
- :mod:`~gateway.auth.keys`, :mod:`~gateway.auth.jwks` — where verification keys come from.
- :mod:`~gateway.auth.clearance` — claims -> clearance level.
- :mod:`~gateway.auth.conditions` — route hours, networks, client address, min level.
- :mod:`~gateway.auth.devtoken` — local HS256 tokens for ``gateway token`` / ``demo``.

Policy is pure (no I/O) except the JWKS fetch, which takes the aiohttp session
the server owns.
"""

from gateway.auth.config import AuthConfig, ClearanceConfig, IssuerConfig
from gateway.auth.verify import AUTH_FAILURE_REASONS, Authenticator, AuthError

__all__ = [
    "AUTH_FAILURE_REASONS",
    "AuthConfig",
    "AuthError",
    "Authenticator",
    "ClearanceConfig",
    "IssuerConfig",
]
