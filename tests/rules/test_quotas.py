"""Quota entries: validated and stored (enforced by another component)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import KeyPath
from gateway.rules.quotas import parse_duration, parse_quotas


def parse(raw: Any) -> tuple[Any, list[str]]:
    problems: list[str] = []

    def err(path: KeyPath, msg: str) -> None:
        problems.append(f"{'.'.join(map(str, path))}: {msg}")

    return parse_quotas(raw, err), problems


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800), (30, 30)]
)
def test_durations(text: Any, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["1w", "0h", "h", -5, 0, True, 1.5, None])
def test_bad_durations(bad: Any) -> None:
    assert parse_duration(bad) is None


def test_valid_quota() -> None:
    quotas, problems = parse(
        [
            {
                "name": "q",
                "per": "client_ip",
                "window": "15m",
                "alert_distinct": 10,
                "max_distinct": 20,
                "max_requests": 100,
            }
        ]
    )
    assert problems == []
    (q,) = quotas
    assert (q.name, q.per, q.window) == ("q", "client_ip", 900)
    assert dict(q.alerts) == {"distinct": 10}
    assert dict(q.limits) == {"distinct": 20, "requests": 100}


def test_invalid_quotas() -> None:
    quotas, problems = parse(
        [
            {"name": "q", "per": "tenant", "window": "1w", "max_records": 0, "colour": 1},
            {"name": "q", "window": "1h"},
            {"name": "r", "window": "1h", "alert_records": 10, "max_records": 5},
            "nope",
        ]
    )
    assert quotas == ()
    assert problems == [
        "quotas.0.colour: unknown key (allowed: name, per, window, alert_records, "
        "alert_distinct, alert_requests, max_records, max_distinct, max_requests)",
        "quotas.0.per: must be one of: subject, client_ip, subject_route",
        "quotas.0.window: must be a duration like 90s, 15m, 1h, 1d",
        "quotas.0.max_records: must be a positive integer",
        "quotas.0: needs at least one alert_* or max_* threshold",
        "quotas.1.name: duplicate quota 'q'",
        "quotas.1: needs at least one alert_* or max_* threshold",
        "quotas.2.alert_records: above max_records: the alert would never fire",
        "quotas.3: expected {name, per, window, alert_*, max_*}",
    ]


def test_quotas_must_be_a_list() -> None:
    assert parse({"name": "q"}) == ((), ["quotas: must be a list of quotas"])
    assert parse(None) == ((), [])


def test_per_subject_route() -> None:
    quotas, problems = parse(
        [{"name": "q", "per": "subject_route", "window": "1h", "max_records": 5}]
    )
    assert problems == []
    assert quotas[0].per == "subject_route"
