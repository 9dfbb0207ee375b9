"""Request ids: 32 hex characters like uuid4().hex, never repeated."""

from __future__ import annotations

import re
import subprocess
import sys

from gateway.requestid import new_request_id


def test_ids_are_hex_and_unique_in_a_process() -> None:
    ids = [new_request_id() for _ in range(10000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_processes_draw_their_own_prefix() -> None:
    code = "from gateway.requestid import new_request_id as n; print(n())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip()[:16] != new_request_id()[:16]
