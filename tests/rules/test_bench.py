"""The masking benchmark runs and reports what it promises (numbers are not asserted)."""

from __future__ import annotations

from gateway.rules.bench import _decode, _response, bench_masking, customers


def test_bench_reports_every_measure() -> None:
    out = bench_masking(small=3, large=10, huge_bytes=20_000, runs=(2, 2))
    assert set(out) == {
        "small_body_bytes",
        "large_body_bytes",
        "huge_body_bytes",
        "native_answers",
        "large_10rec_reference_cpu_us[internal]",
        "huge_mask_peak_mb[internal]",
        "huge_mask_peak_over_body",
        "huge_reference_peak_over_body",
        *(f"small_3rec_cpu_us[{lvl}]" for lvl in ("public", "internal", "confidential", "secret")),
        *(f"large_10rec_cpu_us[{lvl}]" for lvl in ("public", "internal", "confidential", "secret")),
    }
    assert all(v >= 0 for v in out.values())
    assert out["huge_body_bytes"] >= 20_000
    assert out["native_answers"] == 1.0  # the shipped pack is served by the native pass


def test_bench_documents_decode_like_the_gateway() -> None:
    doc = _decode(_response(customers(2)))
    account = doc["data"][0]["accounts"][0]
    assert type(account["account_id"]).__name__ == "Number"  # wider than 64 bits
    assert type(doc["data"][0]["balance"]).__name__ == "Number"
