"""Memory backend specifics: idle buckets are dropped, a clock step back is harmless."""

from __future__ import annotations

import pytest

from gateway.quota import KeyParts, MemoryBackend
from gateway.rules.model import Quota

Q = Quota("bulk", "subject", 10, {}, {"records": 5, "distinct": 5, "requests": 5})


async def test_idle_buckets_are_dropped() -> None:
    b = MemoryBackend()
    for i in range(100):
        caller = b.buckets((Q,), KeyParts(f"u{i}", "10.0.0.1", "r"))
        await b.account((Q,), caller, 1, [f"c{i}"], now=i / 100)
    assert len(b) == 100
    late = b.buckets((Q,), KeyParts("late", "10.0.0.1", "r"))
    await b.precheck((Q,), late, now=10.5)
    assert len(b) == 50  # u0..u50 (last seen at or before t=0.5) are gone; "late" is new
    await b.precheck((Q,), late, now=30)
    assert len(b) == 1
    await b.close()
    assert len(b) == 0


async def test_a_clock_step_back_is_clamped() -> None:
    b = MemoryBackend()
    caller = b.buckets((Q,), KeyParts("u", "10.0.0.1", "r"))
    await b.account((Q,), caller, 1, ["a"], now=100)
    d = await b.account((Q,), caller, 1, ["b"], now=50)  # counted as at t=100
    assert d.usage["bulk"].used_records == 2
    d = await b.precheck((Q,), caller, now=109.9)
    assert d.usage["bulk"].used_records == 2
    d = await b.precheck((Q,), caller, now=110)
    assert d.usage["bulk"].used_records == 0


async def test_a_call_wants_one_bucket_per_quota() -> None:
    b = MemoryBackend()
    caller = b.buckets((Q,), KeyParts("u", "10.0.0.1", "r"))
    with pytest.raises(ValueError):
        await b.account((Q, Q), caller, 1, ["a"], now=0)
    with pytest.raises(ValueError):
        await b.precheck((Q,), caller * 2, now=0)
