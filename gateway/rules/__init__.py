"""Field policies: load ``rules/``, compile plans per caller, mask responses.

Public API::

    load_rules(directory, *, hash_key: bytes) -> RuleSet        # raises ConfigError
    ruleset.version, ruleset.levels, ruleset.policies[name] -> Policy
    ruleset.plan(policy_name, principal | None) -> Plan           # None: anonymous, lowest
    plan.apply(doc, *, records=None) -> MaskResult               # mutates doc in place
    MaskResult.document, .fields {masked|dropped|redacted|hashed|revealed: {rule: n}}, .records
    compile_records(path, id_key) -> RecordSpec                  # a route's own records
    principal_from_claims(claims, levels, ...) -> Principal

Module map: ``loader`` (files -> RuleSet), ``actions`` and ``presets`` (what
happens to a value), ``model`` (rules and their resolution), ``automaton``
(paths -> DFA), ``plan`` and ``walk`` (applying a plan), ``quotas``,
``principal``, ``bench``.
"""

from gateway.rules.actions import HASH_PREFIX, MARKER, Action
from gateway.rules.loader import compile_records, load_rules
from gateway.rules.model import FieldRule, NeedToKnow, Outcome, Quota, Records, RecordSpec
from gateway.rules.plan import MaskResult, Plan
from gateway.rules.principal import principal_from_claims
from gateway.rules.ruleset import Policy, RuleSet
from gateway.rules.walk import Touch

__all__ = [
    "HASH_PREFIX",
    "MARKER",
    "Action",
    "FieldRule",
    "MaskResult",
    "NeedToKnow",
    "Outcome",
    "Plan",
    "Policy",
    "Quota",
    "RecordSpec",
    "Records",
    "RuleSet",
    "Touch",
    "compile_records",
    "load_rules",
    "principal_from_claims",
]
