"""The serving process's malloc settings (gateway.allocator)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from gateway import allocator

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_applied_on_glibc_unless_the_operator_set_malloc_tunables() -> None:
    # A fresh interpreter each: the settings are process-wide.
    code = "from gateway.allocator import tune_malloc; print(tune_malloc())"

    def run(env: dict[str, str]) -> str:
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()

    assert run({}) == "True"
    assert run({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}) == "False"
    assert run({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=4096"}) == "True"


def test_not_applied_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.tune_malloc() is False
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.tune_malloc() is False
