"""Sizes and durations as configuration files write them (``"10MiB"``, ``"30s"``)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}
_SIZE_UNITS |= {"gb": 1000**3, "gib": 1024**3}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|)\s*$")


def parse_size(value: Any) -> int:
    """``1048576``, ``"10MiB"``, ``"512 kb"`` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1048576 or '10MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str) and (m := _SIZE_RE.match(value)):
        unit = m.group(2).lower()
        if unit in _SIZE_UNITS:
            return int(m.group(1)) * _SIZE_UNITS[unit]
    raise ValueError("expected a size such as 1048576 or '10MiB'")


def parse_duration(value: Any) -> float:
    """``30``, ``"30s"``, ``"1h"``, ``"250ms"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '30s', '5m' or '1h'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str) and (m := _DURATION_RE.match(value)):
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError("expected a duration such as 30, '30s', '5m' or '1h'")


Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
