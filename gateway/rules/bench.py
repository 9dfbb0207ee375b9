"""Masking benchmark: CPU per response and peak memory, with the shipped rule pack.

Measured, not asserted (run ``python -m gateway.rules.bench`` or ``make bench``).
Targets from the issue: a 10 KB / 20-record list response <= 60 us CPU, a
1 MB / 2000-record response <= 5 ms CPU, and masking a 25 MB body within 2x
the body size of memory above idle. What is timed is what the body filter
does with the bytes it read: the native pass (``Plan.mask_bytes``), or the
reference (decode, apply, encode) where the native pass declines; the
reference alone is reported for comparison.

Documents are customer records as the demo legacy system serves them, decoded
the way the gateway's codec does (decimals and wide integers as ``Number``).
``Plan.apply`` mutates in place, so every timed run gets its own fresh copy,
decoded before the clock starts.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from gateway.jsoncodec import Number, decode, encode
from gateway.rules.loader import load_rules
from gateway.rules.plan import Plan
from gateway.rules.principal import principal_from_claims
from gateway.rules.ruleset import RuleSet

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
INT64 = 2**63


def _exact(v: Any) -> Any:
    """Decimal and wide ints -> Number, as the gateway's JSON decoder yields them."""
    if isinstance(v, dict):
        return {k: _exact(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_exact(x) for x in v]
    if isinstance(v, Decimal):
        return Number(str(v))
    if type(v) is int and not -INT64 <= v < INT64:
        return Number(str(v))
    return v


def customers(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Customer-like records: the demo generator when present, else a local stand-in."""
    try:
        from gateway.demo.data import generate_customers
    except ImportError:  # pragma: no cover - the demo package ships with the gateway
        return [_fallback(random.Random(seed + i), i) for i in range(count)]
    return [_exact(c) for c in generate_customers(count, seed=seed)]


def _fallback(rng: random.Random, i: int) -> dict[str, Any]:
    digits = "".join(rng.choice("0123456789") for _ in range(40))
    return {
        "id": i + 1, "customer_no": f"C{digits[:10]}", "name": "张三", "gender": "男",
        "birth_date": "1990-03-07", "id_number": f"110101{digits[:12]}",
        "phone": f"138{digits[:8]}", "email": f"u{i}@example.com",
        "address": "北京市朝阳区建国路 88 号", "bank_card": digits[:19],
        "balance": Number("1234.56"), "txn_password": "123456", "password": digits[:32],
        "risk_level": "R2", "credit_limit": 50000, "branch": "北京朝阳支行",
        "accounts": [{"account_id": Number(digits[:20]), "number": digits[5:24], "type": "储蓄",
                      "currency": "CNY", "balance": Number("88.10"), "opened": "2025-01-02"}],
        "remarks": "客户咨询大额存单利率", "created_at": "2025-01-02T10:00:00+08:00",
    }  # fmt: skip


def _response(records: list[dict[str, Any]]) -> bytes:
    doc = {"data": records, "page": 1, "size": len(records), "total": len(records)}
    return orjson.dumps(_plain(doc))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, Number):
        return orjson.Fragment(v.text.encode())
    return v


def _decode(body: bytes) -> Any:
    """The document as the gateway's codec builds it."""
    return decode(body)


def mask_body(plan: Plan, body: bytes) -> bytes:
    """What the body filter does: the native pass, or the reference when it declines."""
    fast = plan.mask_bytes(body)
    if fast is not None:
        return fast[0]
    return encode(plan.apply(decode(body)).document)


def reference(plan: Plan, body: bytes) -> bytes:
    return encode(plan.apply(decode(body)).document)


def _cpu_us(fn: Callable[[Plan, bytes], bytes], plan: Plan, body: bytes, runs: int) -> float:
    """Best CPU time of ``fn(plan, body)`` over ``runs``, the GC paused (the minimum:
    this machine is shared, and interference only ever adds time)."""
    fn(plan, body)  # warm caches, as a running server has
    times = []
    for _ in range(runs):
        gc.collect()
        gc.disable()
        try:
            start = time.process_time()
            fn(plan, body)
            times.append(time.process_time() - start)
        finally:
            gc.enable()
    return min(times) * 1e6


def _peak_mb(fn: Callable[[Plan, bytes], bytes], plan: Plan, body: bytes) -> float:
    """Peak traced memory above what was allocated before (the body is already held)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = fn(plan, body)
        peak = tracemalloc.get_traced_memory()[1]
        del out
    finally:
        tracemalloc.stop()
    return (peak - base) / 1e6


def bench_masking(
    rules_dir: str | Path = RULES_DIR,
    *,
    small: int = 20,
    large: int = 2000,
    huge_bytes: int = 25_000_000,
    runs: tuple[int, int] = (300, 15),
) -> dict[str, float]:
    """CPU (us per response, best of ``runs``) of the body filter's masking by clearance,
    for a ``small``-record and a ``large``-record response, the reference pipeline for
    comparison, and peak memory while masking ~``huge_bytes``."""
    ruleset = load_rules(rules_dir, hash_key=b"bench-key")
    out: dict[str, float] = {}
    body_small = _response(customers(small))
    body_large = _response(customers(large))
    out["small_body_bytes"] = float(len(body_small))
    out["large_body_bytes"] = float(len(body_large))
    plans = {lvl: _plan(ruleset, lvl) for lvl in ruleset.levels}
    out["native_answers"] = float(all(p.mask_bytes(body_small) is not None for p in plans.values()))
    for level, plan in plans.items():
        out[f"small_{small}rec_cpu_us[{level}]"] = _cpu_us(mask_body, plan, body_small, runs[0])
    for level, plan in plans.items():
        out[f"large_{large}rec_cpu_us[{level}]"] = _cpu_us(mask_body, plan, body_large, runs[1])
    internal = plans[ruleset.levels[1] if len(ruleset.levels) > 1 else ruleset.levels[0]]
    out[f"large_{large}rec_reference_cpu_us[internal]"] = _cpu_us(
        reference, internal, body_large, max(3, runs[1] // 3)
    )
    records = customers(large)
    copies = max(1, huge_bytes // len(body_large) + 1)
    huge = _response(records * copies)
    del records
    out["huge_body_bytes"] = float(len(huge))
    peak = _peak_mb(mask_body, internal, huge)
    out["huge_mask_peak_mb[internal]"] = peak
    out["huge_mask_peak_over_body"] = peak * 1e6 / len(huge)
    ref_peak = _peak_mb(reference, internal, huge)
    out["huge_reference_peak_over_body"] = ref_peak * 1e6 / len(huge)
    return out


def _plan(ruleset: RuleSet, level: str) -> Plan:
    return ruleset.plan("customer", principal_from_claims({"clearance": level}, ruleset.levels))


if __name__ == "__main__":
    for name, value in bench_masking().items():
        print(f"{name:40s} {value:14.3f}")
