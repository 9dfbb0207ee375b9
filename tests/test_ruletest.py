"""gateway test: case files load with file/key/line errors; runs give readable diffs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.jsoncodec import Number
from gateway.rules import load_rules
from gateway.ruletest import case_files, load_cases, run_case, run_cases, summary
from gateway.types import Principal

RULES = Path(__file__).parents[1] / "rules"
ROUTES = {"customers": "customer", "health": None}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cases.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_product_case_passes() -> None:
    rs = load_rules(RULES, hash_key=b"k")
    cases = load_cases(RULES / "tests" / "customer_test.yaml")
    first = cases[0]
    assert (first.name, first.route, first.line) == (
        "tellers see the phone masked and never the password",
        "customers",
        4,
    )
    assert run_case(rs, first, ROUTES).passed


def test_failure_report_names_each_difference(tmp_path: Path) -> None:
    rs = load_rules(RULES, hash_key=b"k")
    cases = load_cases(
        write(
            tmp_path,
            """\
- name: wrong expectations
  policy: customer
  claims: {clearance: confidential}
  response: {data: [{id: 1, phone: "13812345678", password: x, branch: b, balance: 100.10}]}
  expect: {data: [{id: "1", phone: "13812345678", branch: b, extra: 1, balance: 0}], total: 3}
  expect_records: 2
""",
        )
    )
    (result,) = run_cases(rs, cases, ROUTES)
    assert not result.passed
    assert result.differences == (
        "$['data'][0]['id']: expected \"1\", got 1",
        "$['data'][0]['phone']: expected \"13812345678\", got \"138****5678\"",
        "$['data'][0]['extra']: missing, expected 1",
        "$['total']: missing, expected 3",
        "records: expected 2, got 1",
    )
    report = result.report()
    assert report.startswith(f"FAIL wrong expectations ({tmp_path / 'cases.yaml'}:1)\n")
    assert '  got:\n    {\n      "data": [' in report
    assert summary([result]).endswith("0 passed, 1 failed\n")


def test_numbers_compare_by_value_and_keep_text(tmp_path: Path) -> None:
    rs = load_rules(RULES, hash_key=b"k")
    cases = load_cases(
        write(
            tmp_path,
            """\
- name: exact decimals
  policy: customer
  claims: {clearance: secret, department: risk}
  response: {data: {id: 1, balance: 100.10, credit_limit: 5}}
  expect: {data: {id: 1, balance: 100.10, credit_limit: 5.0}}
""",
        )
    )
    assert cases[0].response["data"]["balance"] == Number("100.10")
    result = run_case(rs, cases[0], ROUTES)
    assert result.passed, result.report()
    assert result.actual["data"]["balance"] == Number("100.10")


def test_hash_placeholder_and_bool_strictness(tmp_path: Path) -> None:
    rs = load_rules(RULES, hash_key=b"any key")
    cases = load_cases(
        write(
            tmp_path,
            """\
- name: pseudonyms
  policy: customer
  response: {data: {id: 1, customer_no: C1}}
  expect: {data: {id: 1, customer_no: <hash>}}
- name: true is not 1
  policy: customer
  response: {data: {id: true}}
  expect: {data: {id: 1}}
""",
        )
    )
    ok, bad = run_cases(rs, cases, ROUTES)
    assert ok.passed
    assert bad.differences == ("$['data']['id']: expected 1, got true",)


def test_route_problems_and_custom_resolver(tmp_path: Path) -> None:
    rs = load_rules(RULES, hash_key=b"k")
    cases = load_cases(
        write(
            tmp_path,
            """\
- {name: a, route: nowhere, response: {}, expect: {}}
- {name: b, route: health, response: {}, expect: {}}
- {name: c, policy: nope, response: {}, expect: {}}
- {name: d, route: customers, claims: {sub: t}, response: {data: {id: 1, phone: "13812345678"}},
   expect: {data: {id: 1, phone: "13812345678"}}}
""",
        )
    )
    results = run_cases(rs, cases, ROUTES, resolve=lambda c: Principal("t", 3, "secret", c))
    assert [r.error for r in results] == [
        "unknown route 'nowhere'",
        "route 'health' has no policy",
        "unknown policy 'nope'",
        None,
    ]
    assert results[3].passed


def test_case_file_errors_name_key_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
- name: ok
  policy: customer
  response: {}
  expect: {}
- route: customers
  policy: customer
  claims: [1]
  response: {}
  colour: red
  expect_records: -1
- just text
""",
    )
    with pytest.raises(ConfigError) as info:
        load_cases(path)
    assert [(i.key, i.message, i.line) for i in info.value.issues] == [
        (
            "[1].colour",
            "unknown key (allowed: name, description, route, policy, claims, response, "
            "expect, expect_records)",
            9,
        ),
        ("[1].name", "missing or not text", 5),
        ("[1]", "name exactly one of `route` or `policy`", 5),
        ("[1].claims", "must be a mapping of token claims", 7),
        ("[1]", "missing `expect`", 5),
        ("[1].expect_records", "must be a whole number", 10),
        ("[2]", "expected a test case {name, route|policy, claims, response, expect}", 11),
    ]
    with pytest.raises(ConfigError):
        load_cases(write(tmp_path, "name: not a list\n"))


def test_case_files_in_a_rules_directory_or_a_tests_directory(tmp_path: Path) -> None:
    assert case_files(RULES) == [RULES / "tests" / "customer_test.yaml"]
    (tmp_path / "a.yaml").write_text("[]", encoding="utf-8")
    (tmp_path / "b.txt").write_text("", encoding="utf-8")
    assert case_files(tmp_path) == [tmp_path / "a.yaml"]
