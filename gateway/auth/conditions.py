"""Per-route access conditions: hours, source networks, client address, level.

Pure functions, no I/O. Parse at load (``parse_hours``, ``parse_networks``),
test per request (``HoursWindow.contains``, ``allowed``).

Rules:

- ``allow_hours: "HH:MM-HH:MM Area/City"``: wall-clock time in that zone (so
  DST is followed), start inclusive, end exclusive; ``start > end`` wraps past
  midnight (``22:00-06:00``); ``24:00`` may end a window; ``start == end`` is
  rejected as ambiguous (write ``00:00-24:00`` for all day). The zone is
  required: the server's own zone is not a policy.
- ``allow_networks``: IPv4 and IPv6 CIDRs (a bare address is a /32 or /128;
  host bits are ignored, as the config validator accepts them). An
  IPv4-mapped IPv6 address (``::ffff:10.1.2.3``, what a dual-stack socket
  reports) is matched as the IPv4 address, and a mapped network as the IPv4
  network. An address that does not parse is never allowed.
- ``client_ip``: ``X-Forwarded-For`` is believed only when the socket peer is
  a trusted proxy. Then the list is walked from the right, skipping trusted
  hops; the first untrusted hop is the client. Entries a client wrote itself
  sit further left and are never reached. If every hop is trusted, the
  leftmost is the client; if the walk meets an entry that is not an address,
  the client is :data:`UNKNOWN_CLIENT`, which no network allows.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.types import Principal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN_CLIENT = "unknown"

_HOURS_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s+(\S+)\s*$")
_MAPPED_V6 = ipaddress.IPv6Network("::ffff:0:0/96")


# --- hours ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoursWindow:
    """A daily window; ``start``/``end`` are seconds after local midnight."""

    start: int
    end: int
    zone: ZoneInfo

    def contains(self, now: datetime) -> bool:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        local = now.astimezone(self.zone)
        t = local.hour * 3600 + local.minute * 60 + local.second
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


@functools.lru_cache(maxsize=256)
def parse_hours(spec: str) -> HoursWindow:
    """``"08:00-20:00 Asia/Shanghai"`` -> :class:`HoursWindow`; ValueError if malformed."""
    m = _HOURS_RE.match(spec) if isinstance(spec, str) else None
    if not m:
        raise ValueError("expected 'HH:MM-HH:MM Area/City', e.g. '08:00-20:00 Asia/Shanghai'")
    sh, sm, eh, em, zone_name = m.groups()
    start, end = _minute(int(sh), int(sm), "start"), _minute(int(eh), int(em), "end")
    if start == 24 * 60:
        raise ValueError("the start time must be before 24:00")
    if start == end:
        raise ValueError("start and end are equal; write 00:00-24:00 for the whole day")
    try:
        zone = ZoneInfo(zone_name)
    except (KeyError, ValueError, OSError):
        raise ValueError(
            "unknown time zone; use an IANA name such as Asia/Shanghai or UTC"
        ) from None
    return HoursWindow(start * 60, end * 60, zone)


def _minute(hour: int, minute: int, which: str) -> int:
    if minute > 59 or hour > 24 or (hour == 24 and minute != 0):
        raise ValueError(f"the {which} time is not a valid HH:MM (00:00 to 24:00)")
    return hour * 60 + minute


def within_hours(spec: str | HoursWindow, now: datetime) -> bool:
    """Whether aware ``now`` falls inside the window."""
    window = parse_hours(spec) if isinstance(spec, str) else spec
    return window.contains(now)


# --- networks -------------------------------------------------------------------------


def _unmap_network(net: Network) -> Network:
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED_V6):
        v4 = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((v4, net.prefixlen - 96))
    return net


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings -> networks; ValueError names the entry's position."""
    out: list[Network] = []
    for i, spec in enumerate(specs):
        try:
            net = ipaddress.ip_network(spec.strip(), strict=False)
        except (ValueError, TypeError, AttributeError):
            raise ValueError(
                f"entry {i} is not an IP network (e.g. 10.0.0.0/8 or 2001:db8::/32)"
            ) from None
        out.append(_unmap_network(net))
    return tuple(out)


def parse_ip(value: str | Address) -> Address | None:
    """An address (IPv4-mapped IPv6 -> IPv4), or None if it does not parse."""
    if isinstance(value, str):
        try:
            addr: Address = ipaddress.ip_address(value.strip())
        except ValueError:
            return None
    else:
        addr = value
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def allowed(ip: str | Address, networks: Sequence[Network]) -> bool:
    """Whether ``ip`` is inside any of ``networks``; unparsable -> False."""
    addr = parse_ip(ip)
    if addr is None:
        return False
    # A v4 address is never "in" a v6 network (ipaddress returns False), so mixed lists are fine.
    return any(addr in net for net in networks)


# --- client address -------------------------------------------------------------------


def _parse_hop(hop: str) -> Address | None:
    """An X-Forwarded-For entry; tolerates a port ("1.2.3.4:80", "[::1]:80") and quotes."""
    hop = hop.strip().strip('"')
    if hop.startswith("["):
        host, sep, _ = hop[1:].partition("]")
        return parse_ip(host) if sep else None
    if hop.count(":") == 1:
        hop = hop.partition(":")[0]
    return parse_ip(hop)


def client_ip(peer: str, forwarded_for: str | None, trusted_proxies: Sequence[Network]) -> str:
    """The client's address; see the module rules. ``forwarded_for`` is all
    ``X-Forwarded-For`` values joined with ``", "`` in header order."""
    peer_addr = parse_ip(peer)
    if peer_addr is None:
        return peer  # a unix socket or similar: nothing to resolve
    if not forwarded_for or not trusted_proxies or not allowed(peer_addr, trusted_proxies):
        return str(peer_addr)
    current = peer_addr
    for hop in reversed(forwarded_for.split(",")):
        addr = _parse_hop(hop)
        if addr is None:
            return UNKNOWN_CLIENT
        if not allowed(addr, trusted_proxies):
            return str(addr)
        current = addr
    return str(current)


# --- level ----------------------------------------------------------------------------


def meets_min_level(principal: Principal, min_level: int | None) -> bool:
    """Whether the caller's level is at or above the route's ``min_level`` index."""
    return min_level is None or principal.level >= min_level
