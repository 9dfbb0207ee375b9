"""The quota micro-benchmark runs and reports positive rates (values are not asserted)."""

from __future__ import annotations

from typing import Any

from gateway.quota.bench import bench_quota


def test_bench_memory_only() -> None:
    out = bench_quota(None, calls=200)
    assert set(out) == {"memory_account_per_s"} and out["memory_account_per_s"] > 0


def test_bench_with_redis(redis_server: Any) -> None:
    out = bench_quota(redis_server.url, calls=200)
    assert set(out) == {
        "memory_account_per_s",
        "redis_account_per_s",
        "redis_account_concurrent32_per_s",
    }
    assert all(v > 0 for v in out.values())
