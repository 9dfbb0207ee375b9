"""``quotas:`` entries of a policy: validated and stored here, enforced elsewhere.

Each entry is ``{name, per, window, alert_*, max_*}`` where ``per`` is
``subject`` (the default), ``client_ip`` or ``subject_route`` (the subject on
one route: each route the quota applies to has its own budget), ``window``
a duration (``90s``, ``15m``, ``1h``, ``1d`` or whole seconds) and the
thresholds count ``records``, ``distinct`` customers or ``requests`` within
the sliding window. An ``alert_`` threshold above the matching ``max_`` would
never fire and is rejected.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gateway.errors import KeyPath
from gateway.rules.model import Quota

METRICS = ("records", "distinct", "requests")
PER = ("subject", "client_ip", "subject_route")
QUOTA_KEYS = (
    "name",
    "per",
    "window",
    *(f"alert_{m}" for m in METRICS),
    *(f"max_{m}" for m in METRICS),
)
_DURATION = re.compile(r"([1-9][0-9]*)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(v: Any) -> int | None:
    """``"1h"`` -> 3600; a positive int is seconds; anything else None."""
    if type(v) is int and v > 0:
        return v
    if isinstance(v, str):
        m = _DURATION.fullmatch(v)
        if m:
            return int(m.group(1)) * _UNIT[m.group(2)]
    return None


def parse_quotas(raw: Any, err: Callable[[KeyPath, str], None]) -> tuple[Quota, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        err(("quotas",), "must be a list of quotas")
        return ()
    out: list[Quota] = []
    names: set[str] = set()
    for i, q in enumerate(raw):
        at: KeyPath = ("quotas", i)
        if not isinstance(q, dict):
            err(at, "expected {name, per, window, alert_*, max_*}")
            continue
        ok = True
        for k in q:
            if k not in QUOTA_KEYS:
                err((*at, str(k)), f"unknown key (allowed: {', '.join(QUOTA_KEYS)})")
                ok = False
        name = q.get("name")
        if not isinstance(name, str) or not name:
            err((*at, "name"), "missing or not a name")
            ok = False
        elif name in names:
            err((*at, "name"), f"duplicate quota {name!r}")
            ok = False
        else:
            names.add(name)
        per = q.get("per", "subject")
        if per not in PER:
            err((*at, "per"), f"must be one of: {', '.join(PER)}")
            ok = False
        window = parse_duration(q.get("window"))
        if window is None:
            err((*at, "window"), "must be a duration like 90s, 15m, 1h, 1d")
            ok = False
        alerts: dict[str, int] = {}
        limits: dict[str, int] = {}
        for m in METRICS:
            for prefix, into in (("alert_", alerts), ("max_", limits)):
                key = prefix + m
                if key in q:
                    v = q[key]
                    if type(v) is not int or v < 1:
                        err((*at, key), "must be a positive integer")
                        ok = False
                    else:
                        into[m] = v
            if m in alerts and m in limits and alerts[m] > limits[m]:
                err((*at, f"alert_{m}"), f"above max_{m}: the alert would never fire")
                ok = False
        if not alerts and not limits:
            err(at, "needs at least one alert_* or max_* threshold")
            ok = False
        if ok and isinstance(name, str) and window is not None:
            out.append(Quota(name, str(per), window, alerts, limits))
    return tuple(out)
