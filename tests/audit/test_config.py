"""The ``audit:`` config key: PRODUCT.md's shape, options, and precise error locations."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.audit.config import AuditConfig, FileSinkConfig, RedisStreamSinkConfig


def test_product_example_loads() -> None:
    cfg = AuditConfig.model_validate(
        ["stdout", {"file": "/var/log/gateway/audit.jsonl"}, {"redis_stream": "gateway:audit"}]
    )
    assert not cfg.required
    assert [n for n, _ in cfg.sinks] == ["stdout", "file", "redis_stream"]
    _, f = cfg.sinks[1]
    assert isinstance(f, FileSinkConfig) and f.max_bytes == 100 * 1024**2 and f.backups == 5


def test_options_required_and_names() -> None:
    cfg = AuditConfig.model_validate(
        [
            "required",
            {"file": "a.jsonl", "max_bytes": "10MiB", "backups": 2},
            {"file": "b.jsonl", "max_bytes": 0},
            {"redis_stream": "k", "url": "redis://r:6379/1", "maxlen": 1000, "name": "soc"},
        ]
    )
    assert cfg.required
    names = [n for n, _ in cfg.sinks]
    assert names == ["file", "file#2", "soc"]
    assert cfg.sinks[0][1] == FileSinkConfig(file="a.jsonl", max_bytes=10 * 1024**2, backups=2)
    assert isinstance(cfg.sinks[2][1], RedisStreamSinkConfig)


def test_empty_default() -> None:
    assert AuditConfig().sinks == [] and not AuditConfig().required


@pytest.mark.parametrize(
    ("value", "loc"),
    [
        (["stdot"], (0,)),
        ([{"file": "x", "bogus": 1}], (0, "bogus")),
        ([{"fil": "x"}], (0,)),
        ([{"file": "a", "redis_stream": "b"}], (0,)),
        (["stdout", {"file": "a", "max_bytes": "lots"}], (1, "max_bytes")),
        ([{"redis_stream": "k", "url": "http://x"}], (0, "url")),
        ([{"file": "a", "name": "x"}, {"redis_stream": "b", "name": "x"}], ()),
        ([3], (0,)),
    ],
)
def test_errors_name_the_entry_and_key(value: Any, loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        AuditConfig.model_validate(value)
    assert [e["loc"] for e in info.value.errors()] == [loc]


def test_missing_redis_url() -> None:
    cfg = AuditConfig.model_validate(["stdout", {"redis_stream": "k"}])
    assert cfg.missing_redis_url(None) == [1]
    assert cfg.missing_redis_url("redis://127.0.0.1:6379/0") == []
