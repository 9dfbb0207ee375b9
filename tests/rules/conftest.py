"""Helpers for the rules tests: rule directories in tmp_path and callers by level."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.rules import RuleSet, load_rules, principal_from_claims
from gateway.types import Principal

KEY = b"test-hash-key"
LEVELS = "levels: [public, internal, confidential, secret]     # lowest first\n"

# The examples of PRODUCT.md, exactly as written there.
PRODUCT_CUSTOMER = """\
policy: customer
unlisted: keep                     # or drop: allow-list mode, only listed fields pass
fields:
  - {name: txn_password, paths: ["$..password", "$..txn_password"], level: never, action: drop}
  - {name: id_number, paths: ["$..id_number"], level: secret, action: {mask: cn_id}}
  - {name: bank_card, paths: ["$..bank_card", "$..accounts[*].number"], level: secret, action: {mask: bank_card}}
  - name: phone
    paths: ["$..phone", "$..mobile"]
    level: secret                  # at or above: plain
    action: {confidential: {mask: {keep_first: 3, keep_last: 4}}, internal: drop}
  - {name: email, paths: ["$..email"], level: confidential, action: {mask: email}}
  - {name: customer_ref, paths: ["$..customer_no"], level: secret, action: hash}
  - {name: balance, paths: ["$..balance"], level: secret, action: drop,
     need_to_know: {claim: department, any_of: [risk, credit]}}
records: {path: "$.data[*]", id: id}    # what one customer record is, and its id
quotas:
  - {name: bulk-read, per: subject, window: 1h, alert_records: 200, max_records: 500, max_distinct: 100}
"""  # noqa: E501 - verbatim from PRODUCT.md

PRODUCT_TEST = """\
- name: tellers see the phone masked and never the password
  route: customers
  claims: {sub: t1, clearance: confidential}
  response: {data: [{id: 1, phone: "13812345678", password: "x"}]}
  expect: {data: [{id: 1, phone: "138****5678"}]}
"""

RuleDir = Callable[..., Path]


@pytest.fixture
def rule_dir(tmp_path: Path) -> RuleDir:
    """Write ``{file name: YAML text}`` (plus levels.yaml unless given) into a directory."""

    def make(files: dict[str, str], levels: str | None = LEVELS) -> Path:
        d = tmp_path / "rules"
        d.mkdir(exist_ok=True)
        if levels is not None:
            (d / "levels.yaml").write_text(levels, encoding="utf-8")
        for name, text in files.items():
            path = d / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return d

    return make


def ruleset_of(d: Path) -> RuleSet:
    return load_rules(d, hash_key=KEY)


@pytest.fixture
def product_rules(rule_dir: RuleDir) -> RuleSet:
    return ruleset_of(rule_dir({"customer.yaml": PRODUCT_CUSTOMER}))


def caller(level: str, **claims: Any) -> Principal:
    return principal_from_claims(
        {"sub": "u1", "clearance": level, **claims},
        ["public", "internal", "confidential", "secret"],
    )


def policy_yaml(fields: str, unlisted: str = "keep", extra: str = "") -> str:
    """A policy file ``p`` with the given ``fields:`` block (YAML list items)."""
    return f"policy: p\nunlisted: {unlisted}\nfields:\n{fields}{extra}"
