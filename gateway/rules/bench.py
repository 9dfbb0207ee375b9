"""Masking benchmark: CPU per response and peak memory, with the shipped rule pack.

Measured, not asserted (run ``python -m gateway.rules.bench`` or ``make bench``).
Targets from the issue: a 10 KB / 20-record list response <= 60 us CPU, a
1 MB / 2000-record response <= 5 ms CPU, and masking a 25 MB body within 2x
the body size of memory above idle. Masking works in place, so its own peak
is reported above the decoded document; the decode + mask + encode peak of
the whole body filter is reported too, for context.

Documents are customer records as the demo legacy system serves them, decoded
the way the gateway's codec does (decimals and wide integers as ``Number``).
``Plan.apply`` mutates in place, so every timed run gets its own fresh copy,
decoded before the clock starts.
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import time
import tracemalloc
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from gateway.jsoncodec import Number
from gateway.rules.loader import load_rules
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


def _int_or_number(text: str) -> int | Number:
    v = int(text)
    return v if -INT64 <= v < INT64 else Number(text)


def _decode(body: bytes) -> Any:
    """The gateway's codec when present; else the same types by the standard library."""
    try:
        from gateway.jsoncodec import decode
    except ImportError:  # pragma: no cover - the codec ships with the gateway
        return json.loads(body, parse_float=Number, parse_int=_int_or_number)
    return decode(body)


def _cpu_us(ruleset: RuleSet, body: bytes, level: str, runs: int) -> float:
    """Median CPU time of ``apply``, each run on a document decoded just before
    (as in the server, where masking follows decoding), with the GC paused."""
    plan = ruleset.plan("customer", principal_from_claims({"clearance": level}, ruleset.levels))
    plan.apply(_decode(body))  # warm the plan's shape caches, as a running server has
    times = []
    for _ in range(runs):
        doc = _decode(body)
        gc.collect()
        gc.disable()
        try:
            start = time.process_time()
            plan.apply(doc)
            times.append(time.process_time() - start)
        finally:
            gc.enable()
    return statistics.median(times) * 1e6


def _pipeline_peak_mb(ruleset: RuleSet, body: bytes, level: str) -> float | None:
    """Peak traced memory for decode + mask + encode, as the server does it."""
    try:
        from gateway.jsoncodec import decode, encode
    except ImportError:  # pragma: no cover
        return None
    plan = ruleset.plan("customer", principal_from_claims({"clearance": level}, ruleset.levels))
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        encode(plan.apply(decode(body)).document)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - base) / 1e6


def _peak_mb(ruleset: RuleSet, body: bytes, level: str) -> float:
    """Peak memory while masking, above the decoded document. Tracing starts before
    decoding, so the values masking replaces count as freed when they are."""
    plan = ruleset.plan("customer", principal_from_claims({"clearance": level}, ruleset.levels))
    gc.collect()
    tracemalloc.start()
    try:
        doc = _decode(body)
        decoded = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        plan.apply(doc)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - decoded) / 1e6


def bench_masking(
    rules_dir: str | Path = RULES_DIR,
    *,
    small: int = 20,
    large: int = 2000,
    huge_bytes: int = 25_000_000,
    runs: tuple[int, int] = (200, 9),
) -> dict[str, float]:
    """CPU (us per response, median) by clearance for a ``small``-record and a
    ``large``-record response; peak traced memory while masking ~``huge_bytes``."""
    ruleset = load_rules(rules_dir, hash_key=b"bench-key")
    out: dict[str, float] = {}
    body_small = _response(customers(small))
    body_large = _response(customers(large))
    out["small_body_bytes"] = float(len(body_small))
    out["large_body_bytes"] = float(len(body_large))
    for level in ruleset.levels:
        out[f"small_{small}rec_cpu_us[{level}]"] = _cpu_us(ruleset, body_small, level, runs[0])
    for level in ruleset.levels:
        out[f"large_{large}rec_cpu_us[{level}]"] = _cpu_us(ruleset, body_large, level, runs[1])
    records = customers(large)
    copies = max(1, huge_bytes // len(body_large) + 1)
    huge = _response(records * copies)
    out["huge_body_bytes"] = float(len(huge))
    peak = _peak_mb(ruleset, huge, "internal")
    out["huge_mask_peak_mb[internal]"] = peak
    out["huge_mask_peak_over_body"] = peak * 1e6 / len(huge)
    pipeline = _pipeline_peak_mb(ruleset, huge, "internal")
    if pipeline is not None:
        out["huge_decode_mask_encode_peak_mb[internal]"] = pipeline
        out["huge_decode_mask_encode_peak_over_body"] = pipeline * 1e6 / len(huge)
    return out


if __name__ == "__main__":
    for name, value in bench_masking().items():
        print(f"{name:40s} {value:14.3f}")
