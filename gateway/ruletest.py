"""``gateway test``: run the security team's rule test cases.

A case file (``rules/tests/*.yaml``) is a list of cases::

    - name: tellers see the phone masked and never the password
      route: customers                 # or  policy: customer
      claims: {sub: t1, clearance: confidential}
      response: {data: [{id: 1, phone: "13812345678", password: "x"}]}
      expect: {data: [{id: 1, phone: "138****5678"}]}
      expect_records: 1                # optional: records counted in the response

Comparison is exact on values and types (``true`` is not ``1``) but ignores
member order; numbers compare by value, and YAML decimals keep their text
(``100.10`` stays ``100.10``). In ``expect`` the string ``<hash>`` matches any
pseudonym the ``hash`` action produces, so cases do not depend on the key.
A failure comes with one line per difference, each naming its location.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError, ConfigIssue, KeyPath
from gateway.explain import to_json_text
from gateway.jsoncodec import Number
from gateway.jsonpath import format_location
from gateway.rules import HASH_PREFIX, RuleSet, principal_from_claims
from gateway.types import Principal
from gateway.yamlfile import parse_yaml

CASE_KEYS = (
    "name",
    "description",
    "route",
    "policy",
    "claims",
    "response",
    "expect",
    "expect_records",
)
HASH_PLACEHOLDER = "<hash>"
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


class _NumberLoader(yaml.SafeLoader):
    """SafeLoader that keeps YAML decimals as exact :class:`Number` text."""


def _construct_float(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    text = str(node.value).replace("_", "")
    if _JSON_NUMBER.fullmatch(text):
        return Number(text)
    return loader.construct_yaml_float(node)  # type: ignore[arg-type]


_NumberLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    file: str
    line: int | None
    route: str | None
    policy: str | None
    claims: Mapping[str, Any]
    response: Any
    expect: Any
    expect_records: int | None = None


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    passed: bool
    actual: Any = None
    differences: tuple[str, ...] = ()
    error: str | None = None

    def report(self) -> str:
        where = f"{self.case.file}:{self.case.line}" if self.case.line else self.case.file
        if self.passed:
            return f"PASS {self.case.name}"
        lines = [f"FAIL {self.case.name} ({where})"]
        if self.error:
            lines.append(f"  {self.error}")
        lines += [f"  {d}" for d in self.differences]
        if self.actual is not None and self.differences:
            lines.append("  got:")
            lines += ["    " + line for line in to_json_text(self.actual).splitlines()]
        return "\n".join(lines)


def load_cases(path: str | Path) -> list[Case]:
    """Load one case file; raises :class:`ConfigError` listing every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError.single(str(p), "(file)", f"cannot read: {exc}") from None
    doc = parse_yaml(text, str(p))
    data = yaml.load(text, Loader=_NumberLoader)  # a SafeLoader: no object construction
    issues: list[ConfigIssue] = []

    def err(key: KeyPath, msg: str) -> None:
        issues.append(doc.issue(key, msg))

    if not isinstance(data, list):
        raise ConfigError([doc.issue((), "expected a list of test cases")])
    cases: list[Case] = []
    for i, raw in enumerate(data):
        if not isinstance(raw, dict):
            err((i,), "expected a test case {name, route|policy, claims, response, expect}")
            continue
        before = len(issues)
        for k in raw:
            if k not in CASE_KEYS:
                err((i, str(k)), f"unknown key (allowed: {', '.join(CASE_KEYS)})")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            err((i, "name"), "missing or not text")
        route, policy = raw.get("route"), raw.get("policy")
        if (route is None) == (policy is None):
            err((i,), "name exactly one of `route` or `policy`")
        for key, v in (("route", route), ("policy", policy)):
            if v is not None and not isinstance(v, str):
                err((i, key), "must be a name")
        claims = raw.get("claims", {})
        if not isinstance(claims, dict):
            err((i, "claims"), "must be a mapping of token claims")
        for key in ("response", "expect"):
            if key not in raw:
                err((i,), f"missing `{key}`")
        expect_records = raw.get("expect_records")
        if expect_records is not None and (type(expect_records) is not int or expect_records < 0):
            err((i, "expect_records"), "must be a whole number")
        if len(issues) == before:
            case = Case(
                name=str(name),
                file=str(p),
                line=doc.line_of((i,)),
                route=route,
                policy=policy,
                claims=claims,
                response=raw["response"],
                expect=raw["expect"],
                expect_records=expect_records,
            )
            cases.append(case)
    if issues:
        raise ConfigError(issues)
    return cases


def case_files(directory: str | Path) -> list[Path]:
    """``DIR/tests/*.yaml`` when DIR is a rules directory, else ``DIR/*.yaml``."""
    d = Path(directory)
    if (d / "tests").is_dir():
        d = d / "tests"
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def run_case(
    ruleset: RuleSet,
    case: Case,
    route_policies: Mapping[str, str | None] | None = None,
    resolve: Callable[[Mapping[str, Any]], Principal] | None = None,
) -> CaseResult:
    """Run one case. ``resolve`` turns claims into a Principal (default: clearance claim)."""
    policy = case.policy
    if case.route is not None:
        routes = route_policies or {}
        if not routes:
            error = f"route {case.route!r}: run with -c gateway.yaml to map routes to policies"
            return CaseResult(case, False, error=error)
        if case.route not in routes:
            return CaseResult(case, False, error=f"unknown route {case.route!r}")
        policy = routes[case.route]
        if policy is None:
            return CaseResult(case, False, error=f"route {case.route!r} has no policy")
    if policy is None or policy not in ruleset.policies:
        return CaseResult(case, False, error=f"unknown policy {policy!r}")
    if resolve is not None:
        principal = resolve(case.claims)
    else:
        principal = principal_from_claims(case.claims, ruleset.levels)
    result = ruleset.plan(policy, principal).apply(_copy(case.response))
    diffs: list[str] = []
    _diff(case.expect, result.document, (), diffs)
    if case.expect_records is not None and result.records.count != case.expect_records:
        diffs.append(f"records: expected {case.expect_records}, got {result.records.count}")
    return CaseResult(case, not diffs, result.document, tuple(diffs))


def run_cases(
    ruleset: RuleSet,
    cases: Sequence[Case],
    route_policies: Mapping[str, str | None] | None = None,
    resolve: Callable[[Mapping[str, Any]], Principal] | None = None,
) -> list[CaseResult]:
    return [run_case(ruleset, c, route_policies, resolve) for c in cases]


def summary(results: Sequence[CaseResult]) -> str:
    failed = [r for r in results if not r.passed]
    lines = [r.report() for r in results]
    lines.append(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return "\n".join(lines) + "\n"


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def _num(v: Any) -> Decimal | None:
    if type(v) is int:
        return Decimal(v)
    if type(v) is float:
        return Decimal(repr(v))
    if type(v) is Number:
        try:
            return Decimal(v.text)
        except InvalidOperation:
            return None
    return None


def _show(v: Any) -> str:
    return to_json_text(v, indent=None)


def _diff(want: Any, got: Any, loc: KeyPath, out: list[str]) -> None:
    where = format_location(loc)
    if want == HASH_PLACEHOLDER and isinstance(got, str) and got.startswith(HASH_PREFIX):
        return
    if isinstance(want, dict) and isinstance(got, dict):
        for k, v in want.items():
            if k not in got:
                out.append(f"{format_location((*loc, k))}: missing, expected {_show(v)}")
            else:
                _diff(v, got[k], (*loc, k), out)
        for k, v in got.items():
            if k not in want:
                out.append(f"{format_location((*loc, k))}: unexpected {_show(v)}")
        return
    if isinstance(want, list) and isinstance(got, list):
        for i, (w, g) in enumerate(zip(want, got, strict=False)):
            _diff(w, g, (*loc, i), out)
        if len(want) != len(got):
            out.append(f"{where}: expected {len(want)} element(s), got {len(got)}")
        return
    wn, gn = _num(want), _num(got)
    if wn is not None and gn is not None:
        same = wn == gn
    else:
        same = type(want) is type(got) and want == got
    if not same:
        out.append(f"{where}: expected {_show(want)}, got {_show(got)}")
