"""``gateway explain``: the response a caller would get, and why each field changed.

:func:`explain` runs the same plan the server runs (``Plan.trace`` is
``Plan.apply`` plus a list of touched values) on a deep copy of the document,
so what it shows is exactly what the caller receives. :func:`render_text`
formats it for a terminal: the masked JSON, then one line per touched value
with its RFC 9535 location, rule, action and reason, e.g.
``clearance confidential < secret`` or ``need_to_know: department not in [risk]``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from gateway.jsoncodec import Number
from gateway.jsonpath import format_location
from gateway.rules import Records, RuleSet
from gateway.types import Principal


@dataclass(frozen=True, slots=True)
class FieldExplanation:
    location: str  # RFC 9535 normalized path in the upstream document
    rule: str
    action: str  # "clear" when the caller's clearance reveals it
    reason: str


@dataclass(frozen=True, slots=True)
class ExplainResult:
    policy: str
    level: str
    subject: str | None
    document: Any
    fields: tuple[FieldExplanation, ...]
    counts: dict[str, dict[str, int]]
    records: Records


def explain(
    ruleset: RuleSet, policy_name: str, principal: Principal | None, document: Any
) -> ExplainResult:
    """Mask a copy of ``document`` for ``principal`` and record every touched value."""
    plan = ruleset.plan(policy_name, principal)
    result = plan.trace(copy.deepcopy(document))
    fields = tuple(
        FieldExplanation(format_location(t.location), o.rule, o.action, o.reason)
        for t in result.touched
        for o in (t.outcome,)
    )
    return ExplainResult(
        policy=policy_name,
        level=plan.level_name,
        subject=principal.subject if principal is not None else None,
        document=result.document,
        fields=fields,
        counts=result.fields,
        records=result.records,
    )


def to_json_text(value: Any, indent: int | None = 2) -> str:
    """JSON that keeps key order, raw unicode and ``Number`` text; one line if no indent."""
    if indent is None:
        return _compact(value)
    return "".join(_pretty(value, " " * indent, 0))


def _scalar(v: Any) -> str:
    return v.text if isinstance(v, Number) else json.dumps(v, ensure_ascii=False)


def _compact(v: Any) -> str:
    if isinstance(v, dict):
        members = (f"{json.dumps(str(k), ensure_ascii=False)}: {_compact(x)}" for k, x in v.items())
        return "{" + ", ".join(members) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_compact(x) for x in v) + "]"
    return _scalar(v)


def _pretty(v: Any, unit: str, depth: int) -> list[str]:
    if not isinstance(v, dict | list) or not v:
        return [_compact(v)]
    pad, inner = unit * depth, unit * (depth + 1)
    items = list(v.items()) if isinstance(v, dict) else [(None, x) for x in v]
    parts = ["{\n" if isinstance(v, dict) else "[\n"]
    for i, (k, item) in enumerate(items):
        parts.append(inner)
        if k is not None:
            parts += [json.dumps(str(k), ensure_ascii=False), ": "]
        parts += _pretty(item, unit, depth + 1)
        parts.append(",\n" if i < len(items) - 1 else "\n")
    return [*parts, pad, "}" if isinstance(v, dict) else "]"]


def render_text(result: ExplainResult) -> str:
    who = f"subject {result.subject}" if result.subject else "anonymous"
    lines = [
        f"policy {result.policy}, clearance {result.level} ({who})",
        f"records: {result.records.count}"
        + (f" (ids: {', '.join(result.records.ids)})" if result.records.ids else ""),
        "",
        to_json_text(result.document),
        "",
    ]
    if not result.fields:
        lines.append("no field was touched")
        return "\n".join(lines) + "\n"
    lines.append(f"{len(result.fields)} field value(s) touched:")
    width_loc = max(len(f.location) for f in result.fields)
    width_rule = max(len(f.rule) for f in result.fields)
    width_action = max(len(f.action) for f in result.fields)
    for f in result.fields:
        lines.append(
            f"  {f.location:<{width_loc}}  {f.rule:<{width_rule}}  "
            f"{f.action:<{width_action}}  {f.reason}"
        )
    return "\n".join(lines) + "\n"
