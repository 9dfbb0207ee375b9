"""Hours windows, source networks, the client address behind proxies, min level."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.conditions import (
    UNKNOWN_CLIENT,
    allowed,
    client_ip,
    meets_min_level,
    parse_hours,
    parse_networks,
    within_hours,
)
from gateway.types import Principal

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(hour: int, minute: int = 0, second: int = 0, tz: ZoneInfo = SHANGHAI) -> datetime:
    return datetime(2024, 3, 5, hour, minute, second, tzinfo=tz)


# --- hours ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "inside"),
    [
        (at(8, 0), True),  # start inclusive
        (at(7, 59, 59), False),
        (at(12, 30), True),
        (at(19, 59, 59), True),
        (at(20, 0), False),  # end exclusive
        (at(23, 0), False),
    ],
)
def test_day_window(when: datetime, inside: bool) -> None:
    assert within_hours("08:00-20:00 Asia/Shanghai", when) is inside


@pytest.mark.parametrize(
    ("when", "inside"),
    [
        (at(22, 0), True),
        (at(23, 59), True),
        (at(0, 0), True),
        (at(5, 59), True),
        (at(6, 0), False),
        (at(12, 0), False),
        (at(21, 59), False),
    ],
)
def test_window_wrapping_midnight(when: datetime, inside: bool) -> None:
    assert within_hours("22:00-06:00 Asia/Shanghai", when) is inside


def test_time_zones_are_converted() -> None:
    spec = "08:00-20:00 Asia/Shanghai"  # UTC+8
    assert within_hours(spec, datetime(2024, 3, 5, 0, 0, tzinfo=UTC))  # 08:00 in Shanghai
    assert not within_hours(spec, datetime(2024, 3, 5, 23, 59, tzinfo=UTC))  # 07:59 next day
    assert within_hours(spec, datetime(2024, 3, 5, 11, 59, tzinfo=UTC))
    assert not within_hours(spec, datetime(2024, 3, 5, 12, 0, tzinfo=UTC))
    fixed = timezone(timedelta(hours=-5))
    assert within_hours(spec, datetime(2024, 3, 4, 19, 0, tzinfo=fixed))  # 08:00 Shanghai


def test_dst_follows_the_wall_clock() -> None:
    spec = "09:00-17:00 America/New_York"
    # 13:00 UTC is 09:00 in July (EDT, UTC-4) but 08:00 in January (EST, UTC-5).
    assert within_hours(spec, datetime(2024, 7, 1, 13, 0, tzinfo=UTC))  # 09:00 EDT
    assert not within_hours(spec, datetime(2024, 1, 15, 13, 0, tzinfo=UTC))  # 08:00 EST


def test_whole_day_and_24_00() -> None:
    w = parse_hours("00:00-24:00 UTC")
    assert all(w.contains(datetime(2024, 1, 1, h, 59, 59, tzinfo=UTC)) for h in range(24))
    assert within_hours("20:00-24:00 UTC", datetime(2024, 1, 1, 23, 59, 59, tzinfo=UTC))
    assert not within_hours("20:00-24:00 UTC", datetime(2024, 1, 1, 0, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("08:00-20:00", "HH:MM-HH:MM Area/City"),
        ("8-20 Asia/Shanghai", "HH:MM-HH:MM Area/City"),
        ("08:00-20:00 Mars/Olympus", "unknown time zone"),
        ("08:00-20:00 ../../etc/passwd", "unknown time zone"),
        ("08:60-20:00 UTC", "start time"),
        ("08:00-25:00 UTC", "end time"),
        ("24:00-06:00 UTC", "before 24:00"),
        ("08:00-08:00 UTC", "00:00-24:00"),
        ("", "HH:MM-HH:MM"),
    ],
)
def test_bad_hours_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hours(spec)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        within_hours("08:00-20:00 UTC", datetime(2024, 1, 1, 12, 0))


# --- networks -------------------------------------------------------------------------


NETS = parse_networks(["10.0.0.0/8", "127.0.0.0/8", "2001:db8::/32", "192.168.1.7"])


@pytest.mark.parametrize(
    ("ip", "ok"),
    [
        ("10.1.2.3", True),
        ("11.0.0.1", False),
        ("192.168.1.7", True),
        ("192.168.1.8", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("::ffff:10.1.2.3", True),  # v4-mapped, as a dual-stack socket reports it
        ("::ffff:11.1.2.3", False),
        ("::1", False),
        ("not-an-ip", False),
        ("", False),
        ("10.1.2.3/8", False),
    ],
)
def test_allowed(ip: str, ok: bool) -> None:
    assert allowed(ip, NETS) is ok


def test_mapped_networks_match_ipv4_addresses() -> None:
    nets = parse_networks(["::ffff:10.0.0.0/104"])
    assert allowed("10.9.9.9", nets) and not allowed("11.0.0.1", nets)


def test_empty_network_list_allows_nobody() -> None:
    assert not allowed("10.0.0.1", ())


def test_bad_networks() -> None:
    with pytest.raises(ValueError, match="entry 1"):
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])
    # Host bits are ignored, consistent with the config validator.
    assert parse_networks(["10.1.2.3/8"]) == parse_networks(["10.0.0.0/8"])


# --- client address -------------------------------------------------------------------

PROXIES = parse_networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        # An untrusted peer's X-Forwarded-For is ignored entirely.
        ("203.0.113.9", "10.1.1.1", "203.0.113.9"),
        ("203.0.113.9", "127.0.0.1", "203.0.113.9"),
        # Through one trusted proxy.
        ("10.0.0.5", "198.51.100.7", "198.51.100.7"),
        # The client wrote its own XFF: the proxy appended the real address on the right.
        ("10.0.0.5", "127.0.0.1, 10.9.9.9, 198.51.100.7", "198.51.100.7"),
        # A chain of trusted proxies is skipped.
        ("10.0.0.5", "198.51.100.7, 10.0.0.9, 10.0.0.8", "198.51.100.7"),
        ("10.0.0.5", "1.1.1.1,198.51.100.7,10.0.0.9", "198.51.100.7"),
        # Every hop trusted: the leftmost is the client.
        ("10.0.0.5", "10.0.0.7, 10.0.0.6", "10.0.0.7"),
        # An entry that is not an address, reached while walking: unknown, allowed nowhere.
        ("10.0.0.5", "garbage", UNKNOWN_CLIENT),
        ("10.0.0.5", "198.51.100.7, ", UNKNOWN_CLIENT),
        # ... but garbage left of the real client is never reached.
        ("10.0.0.5", "garbage, 198.51.100.7", "198.51.100.7"),
        # Ports and brackets, IPv6 and mapped peers.
        ("10.0.0.5", "198.51.100.7:4711", "198.51.100.7"),
        ("10.0.0.5", "[2001:db8::9]:443", "2001:db8::9"),
        ("fd00::1", "2001:db8::9", "2001:db8::9"),
        ("::ffff:10.0.0.5", "198.51.100.7", "198.51.100.7"),
        ("::ffff:203.0.113.9", "1.2.3.4", "203.0.113.9"),
        ("10.0.0.5", "", "10.0.0.5"),
    ],
)
def test_client_ip(peer: str, xff: str | None, expected: str) -> None:
    assert client_ip(peer, xff, PROXIES) == expected


def test_client_ip_without_trusted_proxies() -> None:
    assert client_ip("10.0.0.5", "198.51.100.7", ()) == "10.0.0.5"
    assert client_ip("unix:/run/gw.sock", "198.51.100.7", PROXIES) == "unix:/run/gw.sock"


@given(st.text(max_size=200))
def test_what_a_client_writes_cannot_replace_its_address(spoofed: str) -> None:
    # The trusted proxy appends the address it saw; whatever the client sent sits left of it.
    assert client_ip("10.0.0.5", f"{spoofed}, 198.51.100.7", PROXIES) == "198.51.100.7"
    assert isinstance(client_ip("10.0.0.5", spoofed, PROXIES), str)


# --- level ----------------------------------------------------------------------------


def test_meets_min_level() -> None:
    p = Principal("u", 2, "confidential", {})
    assert meets_min_level(p, None)
    assert meets_min_level(p, 2) and meets_min_level(p, 0)
    assert not meets_min_level(p, 3)
