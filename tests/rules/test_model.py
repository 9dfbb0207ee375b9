"""How one rule resolves for a caller: clearance, per-level maps, need-to-know, never."""

from __future__ import annotations

import pytest

from gateway.jsonpath import compile_path
from gateway.rules.actions import DROP, parse_action
from gateway.rules.model import FieldRule, NeedToKnow, RecordSpec

LEVELS = ("public", "internal", "confidential", "secret")


def action(raw: object):  # type: ignore[no-untyped-def]
    a, _ = parse_action(raw, b"k")
    assert a is not None
    return a


def rule(
    level: int | None,
    single: object = None,
    per_level: dict[int, object] | None = None,
    ntk: NeedToKnow | None = None,
) -> FieldRule:
    return FieldRule(
        name="r",
        index=0,
        paths=(compile_path("$..r"),),
        level=level,
        action=action(single) if single is not None else DROP,
        per_level=tuple((lvl, action(a)) for lvl, a in sorted((per_level or {}).items())),
        need_to_know=ntk,
    )


PHONE = rule(3, per_level={2: {"mask": "cn_phone"}, 1: "drop"})
NTK = NeedToKnow("department", ("risk", "credit"))


@pytest.mark.parametrize(
    ("r", "level", "ntk_ok", "kind", "action_text", "reason"),
    [
        (PHONE, 3, False, "reveal", "clear", "clearance secret >= secret"),
        (
            PHONE,
            2,
            False,
            "mask",
            "mask cn_phone",
            "clearance confidential < secret; entry for confidential",
        ),
        (PHONE, 1, False, "drop", "drop", "clearance internal < secret; entry for internal"),
        (
            PHONE,
            0,
            False,
            "drop",
            "drop",
            "clearance public < secret; below every per-level entry: drop",
        ),
        (rule(None, "drop"), 3, True, "drop", "drop", "level never"),
        (
            rule(3, "drop", ntk=NTK),
            3,
            True,
            "reveal",
            "clear",
            "clearance secret >= secret and need_to_know: department in [risk, credit]",
        ),
        (
            rule(3, "drop", ntk=NTK),
            3,
            False,
            "drop",
            "drop",
            "need_to_know: department not in [risk, credit]",
        ),
        (rule(3, "drop", ntk=NTK), 2, True, "drop", "drop", "clearance confidential < secret"),
        (
            rule(3, per_level={3: "redact", 2: "hash"}, ntk=NTK),
            3,
            False,
            "redact",
            "redact",
            "need_to_know: department not in [risk, credit]; entry for secret",
        ),
        (rule(1, "keep"), 0, False, "keep", "keep", "clearance public < internal"),
    ],
)
def test_resolve(
    r: FieldRule, level: int, ntk_ok: bool, kind: str, action_text: str, reason: str
) -> None:
    out = r.resolve(level, ntk_ok, LEVELS)
    assert (out.kind, out.action, out.reason) == (kind, action_text, reason)


def test_outcome_strength_orders_drop_first() -> None:
    drop = rule(3, "drop").resolve(0, False, LEVELS)
    mask = rule(3, {"mask": "email"}).resolve(0, False, LEVELS)
    reveal = rule(0, "drop").resolve(3, False, LEVELS)
    assert drop.rank < mask.rank < reveal.rank


@pytest.mark.parametrize(
    ("claims", "ok"),
    [
        ({"department": "risk"}, True),
        ({"department": ["ops", "credit"]}, True),
        ({"department": "Risk"}, False),
        ({"department": 1}, False),
        ({}, False),
    ],
)
def test_need_to_know(claims: dict[str, object], ok: bool) -> None:
    assert NTK.satisfied(claims) is ok


def test_records_are_counted_with_distinct_ids() -> None:
    from gateway.jsoncodec import Number

    spec = RecordSpec(compile_path("$.data[*]"), "id")
    doc = {
        "data": [
            {"id": 1},
            {"id": "2"},
            {"id": Number("12345678901234567890123")},
            {"id": 1},
            {"id": True},
            {"no_id": 5},
            "scalar",
        ]
    }
    found = spec.extract(doc)
    assert found.count == 6  # objects only: "scalar" is not a record
    assert found.ids == ("1", "2", "12345678901234567890123")
    single = RecordSpec(compile_path("$.data"), "id").extract({"data": {"id": 9}})
    assert (single.count, single.ids) == (1, ("9",))
    # The list path on a single-record body selects member values: no records, not 2.
    assert spec.extract({"data": {"id": 9, "name": "x"}}).count == 0
