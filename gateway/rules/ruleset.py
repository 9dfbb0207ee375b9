"""The loaded rule set: levels, policies, and plans compiled per kind of caller.

A :class:`RuleSet` is built whole by :func:`gateway.rules.load_rules` and never
changes; a reload builds a new one and the server swaps the reference. The
only mutable part is the private plan cache, filled on first use: one plan per
(policy, level, need-to-know outcomes), at most ``levels x 2**conditions`` per
policy. Plans are pure data, so concurrent first uses at worst build the same
plan twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.jsonpath import JSONPath
from gateway.rules.automaton import Automaton, plan_states
from gateway.rules.model import FieldRule, NeedToKnow, Quota, RecordSpec
from gateway.rules.plan import Plan
from gateway.types import Principal


@dataclass(frozen=True, eq=False)
class Policy:
    name: str
    file: str
    unlisted: str  # "keep" or "drop"
    rules: tuple[FieldRule, ...]
    records: RecordSpec | None
    quotas: tuple[Quota, ...]
    automaton: Automaton
    general: tuple[tuple[int, JSONPath], ...]  # (rule index, path) for filter/slice paths
    conditions: tuple[NeedToKnow, ...]  # distinct need_to_know conditions
    condition_of: tuple[int | None, ...]  # per rule: index into conditions
    description: str | None = None


class RuleSet:
    """Immutable rules; :meth:`plan` gives the compiled plan for a caller."""

    def __init__(
        self, version: str, levels: tuple[str, ...], policies: Mapping[str, Policy], directory: str
    ) -> None:
        self.version = version
        self.levels = levels
        self.policies: Mapping[str, Policy] = MappingProxyType(dict(policies))
        self.directory = directory
        self._plans: dict[tuple[str, int, tuple[bool, ...]], Plan] = {}

    def __repr__(self) -> str:
        return f"RuleSet(version={self.version!r}, policies={list(self.policies)})"

    def level_of(self, principal: Principal | None) -> int:
        """The caller's level index; anonymous or unknown level names get the lowest."""
        if principal is None:
            return 0
        try:
            return self.levels.index(principal.level_name)
        except ValueError:
            return 0

    def plan(self, policy_name: str, principal: Principal | None) -> Plan:
        """The plan for ``principal`` (None: anonymous, lowest level). KeyError if no policy."""
        policy = self.policies[policy_name]
        level = self.level_of(principal)
        claims = principal.claims if principal is not None else {}
        bits = tuple(c.satisfied(claims) for c in policy.conditions)
        key = (policy_name, level, bits)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._compile(policy, level, bits)
            self._plans[key] = plan
        return plan

    def _compile(self, policy: Policy, level: int, bits: tuple[bool, ...]) -> Plan:
        outcomes = tuple(
            rule.resolve(level, cond is not None and bits[cond], self.levels)
            for rule, cond in zip(policy.rules, policy.condition_of, strict=True)
        )
        return Plan(
            policy=policy.name,
            level=level,
            level_name=self.levels[level],
            outcomes=outcomes,
            root=plan_states(policy.automaton, outcomes),
            general=policy.general,
            allowlist=policy.unlisted == "drop",
            records=policy.records,
        )
