"""make bench stays runnable: its gateway configurations load, and its report prints
every figure the issue asks for (the numbers themselves are never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import bench
from gateway.config import load_config
from gateway.runtime import compile_config


@pytest.mark.parametrize("mode", ["pass", "masked", "redis"])
def test_bench_configurations_load(tmp_path: Path, mode: str) -> None:
    pub, token = bench._keys(tmp_path)
    assert token.count(".") == 2
    cfg = bench._gateway_yaml(tmp_path, mode, 18080, 18081, pub, "redis://127.0.0.1:1/0")
    config = load_config(cfg, env={})
    compiled = compile_config(config, env={"GATEWAY_HASH_KEY": "k"})
    if mode != "pass":
        assert compiled.rules is not None
        assert config.audit.sinks  # audit to a file: the bench measures it on


def test_report_has_every_figure() -> None:
    rows = [
        {"size": s, "mode": m, "rps": 100.0, "p50": 1.0, "p99": 2.0, "cpu_us": 50.0, "rss_mb": 70.0}
        for s in bench.SIZES
        for m in bench.MODES
    ]
    text = bench.report(
        {
            "rows": rows,
            "generator": "wrk",
            "huge": {"idle_mb": 70.0, "peak_mb": 80.0, "masked_bytes": 1},
            "stream": {
                "upstream_mb": 1000.0,
                "seconds": 10.0,
                "idle_mb": 70.0,
                "peak_mb": 80.0,
                "masked_bytes": 1,
            },
        }
    )
    assert "| 0.5KB | masked | 100 | 1.00 | 2.00 | 50 | 70 | 1.00x |" in text
    assert "masked over pass, CPU per request: 0.5KB +0 us (1.00x), 10KB +0 us" in text
    assert "quota state in Redis: 1.00x" in text
    assert "masking a 25 MB body" in text
    assert "streaming a 1000 MB array" in text
