"""The JSONPath Compliance Test Suite (RFC 9535), all 703 cases, through our compiler.

Valid selectors must select exactly the suite's nodes (values and normalized
paths; any listed order where the suite gives ``results``); invalid ones must
be rejected when compiled. A second pass decodes documents the way the gateway
does (decimals as ``Number``) and expects the same selections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.jsoncodec import Number
from gateway.jsonpath import JSONPathSyntaxError, compile_path, format_location, json_equal

CTS = Path(__file__).parent / "rules" / "data" / "jsonpath-cts.json"  # vendored, BSD-2
CASES: list[dict[str, Any]] = json.loads(CTS.read_text(encoding="utf-8"))["tests"]


def _same(values: list[Any], expected: list[Any]) -> bool:
    return len(values) == len(expected) and all(
        json_equal(a, b) for a, b in zip(values, expected, strict=True)
    )


def _matches(case: dict[str, Any], document: Any) -> bool:
    nodes = compile_path(case["selector"]).find(document)
    values = [v for _, v in nodes]
    paths = [format_location(loc) for loc, _ in nodes]
    if "result" in case:
        return _same(values, case["result"]) and paths == case["result_paths"]
    return any(
        _same(values, r) and paths == p
        for r, p in zip(case["results"], case["results_paths"], strict=True)
    )


def test_suite_has_all_cases() -> None:
    assert len(CASES) == 703


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_cts_case(case: dict[str, Any]) -> None:
    if case.get("invalid_selector"):
        with pytest.raises(JSONPathSyntaxError):
            compile_path(case["selector"])
        return
    assert _matches(case, case["document"])


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if not c.get("invalid_selector")],
    ids=[c["name"] for c in CASES if not c.get("invalid_selector")],
)
def test_cts_case_with_exact_numbers(case: dict[str, Any]) -> None:
    """Decimals decoded as Number (as the gateway's codec does) select the same nodes."""
    document = json.loads(json.dumps(case["document"]), parse_float=Number)
    nodes = compile_path(case["selector"]).find(document)
    expected = case["result"] if "result" in case else case["results"][0]
    assert len(nodes) == len(expected)
