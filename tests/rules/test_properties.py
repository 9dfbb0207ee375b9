"""Property: nothing a caller may not see appears anywhere in what they receive.

Documents are random trees in which sensitive members sit at random depths,
each holding a unique random token. After masking for a random caller, the
serialized output must not contain the token of any value whose rule does not
reveal it to that caller; for drop, redact and hash not even 8 characters of it.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.explain import to_json_text
from gateway.rules import RuleSet, principal_from_claims

from .conftest import PRODUCT_CUSTOMER, RuleDir, ruleset_of

LEVELS = ["public", "internal", "confidential", "secret"]
# member name -> rule name in PRODUCT_CUSTOMER
SENSITIVE = {
    "password": "txn_password",
    "txn_password": "txn_password",
    "id_number": "id_number",
    "bank_card": "bank_card",
    "phone": "phone",
    "mobile": "phone",
    "email": "email",
    "customer_no": "customer_ref",
    "balance": "balance",
}
PLAIN = ["id", "name", "branch", "notes"]


def unique_tokens(doc: Any, counter: Any = None) -> Any:
    """Give every string leaf its own 24-character token (upper-case, unlike hashes)."""
    counter = counter if counter is not None else itertools.count()
    if isinstance(doc, dict):
        return {k: unique_tokens(v, counter) for k, v in doc.items()}
    if isinstance(doc, list):
        return [unique_tokens(v, counter) for v in doc]
    n = next(counter)
    return "Z" + hashlib.sha256(str(n).encode()).hexdigest()[:23].upper()


@st.composite
def trees(draw: st.DrawFn, depth: int = 0, sensitive_containers: bool = True) -> Any:
    """Random trees; sensitive members may hold structures unless told otherwise."""
    if depth == 0:
        return unique_tokens(draw(trees(1, sensitive_containers)))
    if depth >= 4 or draw(st.integers(0, 3)) == 0:
        return {
            k: ""
            for k in draw(
                st.lists(st.sampled_from(list(SENSITIVE) + PLAIN), max_size=5, unique=True)
            )
        }
    if draw(st.booleans()):
        return [
            draw(trees(depth + 1, sensitive_containers)) for _ in range(draw(st.integers(0, 3)))
        ]
    inner = ["data", "accounts", "x", *(SENSITIVE if sensitive_containers else [])]
    keys = draw(st.lists(st.sampled_from(inner), max_size=3, unique=True))
    return {k: draw(trees(depth + 1, sensitive_containers)) for k in keys}


def sensitive_tokens(doc: Any, under: str | None = None) -> list[tuple[str, str, str]]:
    """(member, rule, token) for every string held by a sensitive member."""
    out: list[tuple[str, str, str]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if isinstance(v, str) and k in SENSITIVE:
                out.append((k, SENSITIVE[k], v))
            else:
                out += sensitive_tokens(v)
    elif isinstance(doc, list):
        for v in doc:
            out += sensitive_tokens(v)
    return out


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    doc=trees(),
    level=st.sampled_from(LEVELS),
    department=st.sampled_from([None, "risk", "ops"]),
)
def test_no_hidden_value_in_the_output(
    rule_dir: RuleDir, doc: Any, level: str, department: str | None
) -> None:
    rs: RuleSet = ruleset_of(rule_dir({"customer.yaml": PRODUCT_CUSTOMER}))
    claims = (
        {"clearance": level}
        if department is None
        else {"clearance": level, "department": department}
    )
    plan = rs.plan("customer", principal_from_claims(claims, LEVELS))
    kinds = {o.rule: o.kind for o in plan.outcomes}
    text = to_json_text(plan.apply(copy.deepcopy(doc)).document)
    for _member, rule, secret in sensitive_tokens(doc):
        kind = kinds[rule]
        if kind in ("reveal", "keep"):
            continue
        assert secret not in text
        if kind in ("drop", "redact", "hash"):
            assert not any(secret[i : i + 8] in text for i in range(len(secret) - 7))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(doc=trees(sensitive_containers=False), level=st.sampled_from(LEVELS))
def test_allow_list_passes_only_listed_values(rule_dir: RuleDir, doc: Any, level: str) -> None:
    """With unlisted: drop, plain members (no rule) never reach anyone.

    (A structure a rule reveals passes whole, so plain members are only put
    under members no rule selects.)
    """
    policy = PRODUCT_CUSTOMER.replace("unlisted: keep", "unlisted: drop")
    rs = ruleset_of(rule_dir({"customer.yaml": policy}))
    text = to_json_text(
        rs.plan("customer", principal_from_claims({"clearance": level}, LEVELS))
        .apply(copy.deepcopy(doc))
        .document
    )

    def plain(v: Any) -> list[str]:
        if isinstance(v, dict):
            return [
                x
                for k, c in v.items()
                for x in ([c] if k in PLAIN and isinstance(c, str) else plain(c))
            ]
        if isinstance(v, list):
            return [x for c in v for x in plain(c)]
        return []

    for secret in plain(doc):
        assert secret not in text
