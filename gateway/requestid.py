"""Request ids the gateway makes: unique, and cheap on the request path.

``uuid4()`` costs a ``getrandom`` system call per request (about 3 % of a masked
request's CPU in the profile). An id here is a random per-process prefix (64
bits, drawn once at import; workers are fresh interpreters, never forks) and a
counter: 32 hex characters like ``uuid4().hex``, unique across processes and
restarts with overwhelming probability, and never reused within a process.
They are correlation ids, not secrets: nothing is authorised by knowing one.
"""

from __future__ import annotations

import itertools
import os
from typing import Final

_PREFIX: Final = os.urandom(8).hex()
_COUNTER: Final = itertools.count(1)


def new_request_id() -> str:
    return f"{_PREFIX}{next(_COUNTER):016x}"
