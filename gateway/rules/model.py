"""The immutable values a rule set is made of, and how a rule resolves for a caller.

Resolution (PRODUCT.md "Actions", "need_to_know"): a rule shows its value in
clear when the caller's level is at or above the rule's ``level`` **and**, if
the rule has ``need_to_know``, the named claim holds one of the listed values.
Otherwise the rule's action applies: a single action, or from a per-level map
the entry of the highest level at or below the caller's; below every entry the
value is dropped. ``level: never`` means nobody sees it in clear.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.jsonpath import JSONPath
from gateway.rules.actions import DROP, SEVERITY, Action, Transform, scalar_text


@dataclass(frozen=True, slots=True)
class NeedToKnow:
    claim: str
    any_of: tuple[str, ...]

    def satisfied(self, claims: Mapping[str, Any]) -> bool:
        """The claim is a listed string, or a list holding one (exact, case-sensitive)."""
        v = claims.get(self.claim)
        if isinstance(v, str):
            return v in self.any_of
        if isinstance(v, list | tuple):
            return any(isinstance(x, str) and x in self.any_of for x in v)
        return False

    def __str__(self) -> str:
        return f"{self.claim} in [{', '.join(self.any_of)}]"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one rule does for one kind of caller; compiled into plans.

    ``kind`` is ``reveal`` (clear by clearance) or an action kind. ``rank``
    orders outcomes when several rules select the same value: the lowest rank
    (strongest action, then the rule written first) wins.
    """

    rule: str
    slot: int  # index of its counter in a walk (the rule index; -1 for unlisted)
    rank: tuple[int, int]
    kind: str
    counter: str
    transform: Transform | None
    action: str
    reason: str

    @property
    def removes(self) -> bool:
        return self.kind == "drop"

    @property
    def descends(self) -> bool:
        """Clear values may hold nested values that other rules select."""
        return self.transform is None and self.kind != "drop"


UNLISTED = Outcome(
    rule="(unlisted)",
    slot=-1,
    rank=(-SEVERITY["drop"], 1 << 30),
    kind="drop",
    counter="dropped",
    transform=None,
    action="drop",
    reason="unlisted: drop (allow-list policy)",
)


def stronger(a: Outcome | None, b: Outcome) -> Outcome:
    return b if a is None or b.rank < a.rank else a


@dataclass(frozen=True, slots=True)
class FieldRule:
    name: str
    index: int
    paths: tuple[JSONPath, ...]
    level: int | None  # None: level never
    action: Action  # the single action, or DROP when per_level is used
    per_level: tuple[tuple[int, Action], ...]  # ascending by level; empty for a single action
    need_to_know: NeedToKnow | None
    line: int | None = None

    def action_for(self, level: int, levels: tuple[str, ...]) -> tuple[Action, str]:
        if not self.per_level:
            return self.action, ""
        chosen: tuple[int, Action] | None = None
        for entry in self.per_level:
            if entry[0] <= level:
                chosen = entry
        if chosen is None:
            return DROP, "; below every per-level entry: drop"
        return chosen[1], f"; entry for {levels[chosen[0]]}"

    def resolve(self, level: int, ntk_ok: bool, levels: tuple[str, ...]) -> Outcome:
        name = levels[level]
        if self.level is None:
            reason = "level never"
        elif level >= self.level:
            need = self.need_to_know
            if need is None or ntk_ok:
                why = f"clearance {name} >= {levels[self.level]}"
                if need is not None:
                    why += f" and need_to_know: {need}"
                return Outcome(
                    self.name, self.index, (0, self.index), "reveal", "revealed", None, "clear", why
                )
            reason = f"need_to_know: {need.claim} not in [{', '.join(need.any_of)}]"
        else:
            reason = f"clearance {name} < {levels[self.level]}"
        action, note = self.action_for(level, levels)
        return Outcome(
            self.name,
            self.index,
            (-action.severity, self.index),
            action.kind,
            action.counter,
            action.transform,
            action.text,
            reason + note,
        )


@dataclass(frozen=True, slots=True)
class Records:
    """Records a response holds (counted before masking) and their distinct ids."""

    count: int
    ids: tuple[str, ...]


NO_RECORDS = Records(0, ())


@dataclass(frozen=True, slots=True)
class RecordSpec:
    """``records: {path, id}``: what one customer record is, and its id member."""

    path: JSONPath
    id_key: str
    # The path compiled for the native pass (gateway.rules.native); None: reference only.
    native: Any = field(default=None, compare=False, repr=False)
    # id_key as the native pass compares it with member names (raw UTF-8).
    id_bytes: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        from gateway.rules.native import compile_records  # native imports this module

        object.__setattr__(self, "native", compile_records(self.path))
        object.__setattr__(self, "id_bytes", self.id_key.encode("utf-8", "surrogatepass"))

    def extract(self, document: Any) -> Records:
        # A record is a JSON object: `$.data[*]` applied to a single-record body
        # ({"data": {...}}) selects member values, which must not count as records.
        found = [rec for rec in self.path.values(document) if isinstance(rec, dict)]
        ids: dict[str, None] = {}
        for rec in found:
            text = scalar_text(rec.get(self.id_key))
            if text is not None:
                ids[text] = None
        return Records(len(found), tuple(ids))


@dataclass(frozen=True, slots=True)
class Quota:
    """A quota as written; enforced elsewhere. ``window`` is in seconds."""

    name: str
    per: str
    window: int
    alerts: Mapping[str, int]
    limits: Mapping[str, int]
    # Derived once at load: the quota engine (gateway.quota) reads them on every request.
    # The window in the integer milliseconds both backends keep; which of records,
    # distinct, requests it tracks (those an alert_* or max_* declares); and what a hold
    # depends on, ``w_ms:max_records:max_distinct:max_requests`` (0: no max), the string
    # gateway.quota.engine.fingerprint names and the Redis script builds too; and the
    # alert thresholds as (metric, threshold) in that order, the order alerts are reported in.
    window_ms: int = field(init=False, compare=False, repr=False)
    tracks: tuple[bool, bool, bool] = field(init=False, compare=False, repr=False)
    fingerprint: str = field(init=False, compare=False, repr=False)
    alert_order: tuple[tuple[str, int], ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        lim, alerts = self.limits, self.alerts
        records, distinct, requests = (m in lim or m in alerts for m in _QUOTA_METRICS)
        window_ms = self.window * 1000
        maxima = (lim.get("records", 0), lim.get("distinct", 0), lim.get("requests", 0))
        fp = ":".join(map(str, (window_ms, *maxima)))
        object.__setattr__(self, "window_ms", window_ms)
        object.__setattr__(self, "tracks", (records, distinct, requests))
        object.__setattr__(self, "fingerprint", fp)
        order = tuple((m, alerts[m]) for m in _QUOTA_METRICS if m in alerts)
        object.__setattr__(self, "alert_order", order)


# The metrics a quota counts, in the order every report lists them (gateway.quota.engine).
_QUOTA_METRICS = ("records", "distinct", "requests")
