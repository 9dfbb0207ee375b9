"""The shape-compiled fast path gives exactly what the reference walker gives."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.jsoncodec import Number
from gateway.rules import load_rules, principal_from_claims
from gateway.rules.shapes import MAX_SHAPES

from .conftest import KEY, LEVELS
from .strategies import documents, policies

LEVEL_NAMES = ["public", "internal", "confidential", "secret"]


def same(a: Any, b: Any) -> bool:
    """Deep equality that tells 1 from True and Number text from Number text."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(policy=policies(), doc=documents(), level=st.sampled_from(LEVEL_NAMES))
def test_fast_path_equals_reference(
    tmp_path_factory: Any, policy: str, doc: Any, level: str
) -> None:
    d: Path = tmp_path_factory.mktemp("rules")
    (d / "levels.yaml").write_text(LEVELS, encoding="utf-8")
    (d / "p.yaml").write_text(policy, encoding="utf-8")
    rs = load_rules(d, hash_key=KEY)
    plan = rs.plan("p", principal_from_claims({"clearance": level}, LEVEL_NAMES))
    fast = plan.apply(copy.deepcopy(doc))
    reference = plan.trace(copy.deepcopy(doc))  # tracing always takes the reference walker
    assert same(fast.document, reference.document)
    assert fast.fields == reference.fields


def test_shape_cache_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "levels.yaml").write_text(LEVELS, encoding="utf-8")
    (tmp_path / "p.yaml").write_text(
        'policy: p\nfields:\n  - {name: a, paths: ["$..a"], level: secret, action: redact}\n',
        encoding="utf-8",
    )
    rs = load_rules(tmp_path, hash_key=KEY)
    plan = rs.plan("p", None)
    doc = [{f"k{i}": i, "a": Number("1")} for i in range(MAX_SHAPES + 50)]
    out = plan.apply(doc).document
    assert all(r["a"] == "[REDACTED]" for r in out)
    assert plan.root is not None and plan.root.other is not None
    assert len(plan.root.other.shapes) == MAX_SHAPES
