"""Quotas: how many customer records and distinct customers a caller may read.

``engine`` holds the semantics (read its docstring first), ``backend`` the
interface and :class:`StateUnavailable`, ``memory`` and ``redisstore`` the two
stores (``resp``: the pipelined Redis connection), ``holds`` what a process
knows about blocked callers. The request path (``gateway.limiting``) asks
``held`` and, when needed, ``precheck`` before the upstream, and ``account``
once the masked response is ready.
"""

from gateway.quota.backend import QuotaBackend, StateUnavailable, open_backend
from gateway.quota.engine import Decision, KeyParts, QuotaUsage, ratelimit_headers
from gateway.quota.memory import MemoryBackend
from gateway.quota.redisstore import RedisBackend

__all__ = [
    "Decision",
    "KeyParts",
    "MemoryBackend",
    "QuotaBackend",
    "QuotaUsage",
    "RedisBackend",
    "StateUnavailable",
    "open_backend",
    "ratelimit_headers",
]
