"""Loading rules/: the PRODUCT.md examples load as written; every error names file, key, line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError, ConfigIssue
from gateway.rules import load_rules
from gateway.rules.actions import DROP

from .conftest import KEY, PRODUCT_CUSTOMER, PRODUCT_TEST, RuleDir, policy_yaml, ruleset_of


def issues_of(d: Path, key: bytes = KEY) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_rules(d, hash_key=key)
    return info.value.issues


def brief(issues: list[ConfigIssue]) -> list[tuple[str, str, int | None]]:
    return [(Path(i.file).name, f"{i.key}: {i.message}", i.line) for i in issues]


def test_product_examples_load_as_written(rule_dir: RuleDir) -> None:
    d = rule_dir({"customer.yaml": PRODUCT_CUSTOMER, "tests/customer_test.yaml": PRODUCT_TEST})
    rs = ruleset_of(d)
    assert rs.levels == ("public", "internal", "confidential", "secret")
    policy = rs.policies["customer"]
    assert [r.name for r in policy.rules] == [
        "txn_password",
        "id_number",
        "bank_card",
        "phone",
        "email",
        "customer_ref",
        "balance",
    ]
    phone = policy.rules[3]
    assert phone.level == 3
    assert [(lvl, a.text) for lvl, a in phone.per_level] == [
        (1, "drop"),
        (2, "mask keep_first=3 keep_last=4"),
    ]
    assert policy.rules[0].level is None
    assert policy.rules[6].need_to_know is not None
    assert policy.records is not None and policy.records.id_key == "id"
    quota = policy.quotas[0]
    assert (quota.name, quota.per, quota.window) == ("bulk-read", "subject", 3600)
    assert dict(quota.alerts) == {"records": 200}
    assert dict(quota.limits) == {"records": 500, "distinct": 100}
    assert policy.unlisted == "keep"


def test_shipped_rule_pack_loads() -> None:
    rs = load_rules(Path(__file__).parents[2] / "rules", hash_key=KEY)
    assert set(rs.policies) == {"customer"}
    assert rs.policies["customer"].unlisted == "drop"


def test_version_is_a_stable_content_hash(rule_dir: RuleDir) -> None:
    d = rule_dir({"customer.yaml": PRODUCT_CUSTOMER})
    v1 = ruleset_of(d).version
    assert ruleset_of(d).version == v1
    (d / "customer.yaml").write_text(PRODUCT_CUSTOMER + "# a comment\n", encoding="utf-8")
    assert ruleset_of(d).version != v1
    (d / "tests").mkdir()
    (d / "tests" / "x.yaml").write_text(PRODUCT_TEST, encoding="utf-8")
    assert ruleset_of(d).version == ruleset_of(d).version


def test_every_problem_is_reported_at_once(rule_dir: RuleDir) -> None:
    bad = policy_yaml(
        """\
  - {name: a, paths: ["$..x"], level: top, action: drop}
  - {name: b, paths: ["$..y["], level: secret, action: {mask: cnid}}
  - {name: c, paths: ["$..z"], level: secret, colour: red}
  - {name: a, paths: ["$..x"], level: secret, action: {confidential: {mask: email}, boss: drop}}
""",
        extra='records: {path: "$.data[*]"}\n',
    )
    issues = issues_of(rule_dir({"p.yaml": bad, "notes.yaml": "- just: a list\n"}))
    assert brief(issues) == [
        (
            "notes.yaml",
            "(top level): not a policy: expected a `policy:` key (test cases go in tests/)",
            1,
        ),
        (
            "p.yaml",
            "fields[0].level: unknown level 'top' (levels: public, internal, confidential, secret)",
            4,
        ),
        (
            "p.yaml",
            "fields[1].paths[0]: invalid JSONPath '$..y[': expected a selector at offset 5",
            5,
        ),
        (
            "p.yaml",
            "fields[1].action.mask: unknown preset 'cnid' (one of: cn_id, cn_phone, "
            "bank_card, email, cn_name, address)",
            5,
        ),
        (
            "p.yaml",
            "fields[2].colour: unknown key (allowed: name, description, paths, level, "
            "action, need_to_know)",
            6,
        ),
        ("p.yaml", "fields[3].name: duplicate rule name 'a'", 7),
        (
            "p.yaml",
            "fields[3].paths[0]: '$..x' is already selected by rule 'a'; give a value one rule",
            7,
        ),
        (
            "p.yaml",
            "fields[3].action.boss: unknown level 'boss' (levels: public, internal, "
            "confidential, secret)",
            7,
        ),
        ("p.yaml", "records.id: must be the member name of the record id", 8),
    ]


@pytest.mark.parametrize(
    ("field", "message"),
    [
        (
            "{name: a, paths: [$.a], level: secret, action: {secret: drop}}",
            "fields[0].action.secret: never applies: clearance secret is at or above the rule's "
            "level secret and sees the value in clear",
        ),
        (
            "{name: a, paths: [$.a], level: never, need_to_know: {claim: d, any_of: [x]}}",
            "fields[0].need_to_know: has no effect with level: never (nobody sees the value in "
            "clear)",
        ),
        (
            "{name: a, paths: [$.a], level: secret, need_to_know: {claim: d, any_of: []}}",
            "fields[0].need_to_know.any_of: must be a non-empty list of strings",
        ),
        (
            "{name: a, paths: [], level: secret}",
            "fields[0].paths: needs `paths`: a list of JSONPaths",
        ),
        ("{name: a, paths: [$.a]}", "fields[0]: missing 'level' (a level name or never)"),
        (
            "{name: a, paths: [$.a], level: secret, action: {internal: {confidential: drop}}}",
            "fields[0].action.internal: expected one action (per-level maps do not nest)",
        ),
        (
            "{name: a, paths: [$.a], level: secret, action: [drop]}",
            "fields[0].action: expected an action (keep, drop, redact, mask, hash, round) or a "
            "per-level map",
        ),
        (
            "{name: a, paths: [$.a, \"$['a']\"], level: secret}",
            "fields[0].paths[1]: \"$['a']\" is already selected by rule 'a'; give a value one rule",
        ),
        (
            "{name: 'a b', paths: [$.a], level: secret}",
            "fields[0].name: must be a name (letters, digits, _ . -)",
        ),
        ("just text", "fields[0]: expected a field rule {name, paths, level, action}"),
    ],
)
def test_field_errors(rule_dir: RuleDir, field: str, message: str) -> None:
    issues = issues_of(rule_dir({"p.yaml": policy_yaml(f"  - {field}\n")}))
    assert [f"{i.key}: {i.message}" for i in issues] == [message]


def test_hash_without_key_is_an_error(rule_dir: RuleDir) -> None:
    d = rule_dir(
        {"p.yaml": policy_yaml("  - {name: a, paths: [$.a], level: secret, action: hash}\n")}
    )
    issues = issues_of(d, key=b"")
    assert [f"{i.key}: {i.message}" for i in issues] == [
        "fields[0].action: hash needs a key, and the rule set was loaded without one"
    ]


def test_policy_level_errors(rule_dir: RuleDir) -> None:
    d = rule_dir(
        {
            "a.yaml": "policy: p\nunlisted: maybe\nfields: {}\nextra: 1\n",
            "b.yaml": "policy: p\nfields: []\n",
            "c.yaml": "policy: p\nfields: []\n",
        }
    )
    assert brief(issues_of(d)) == [
        (
            "a.yaml",
            "extra: unknown key (allowed: policy, description, unlisted, fields, records, quotas)",
            4,
        ),
        ("a.yaml", "unlisted: must be keep or drop", 2),
        ("a.yaml", "fields: must be a list of field rules", 3),
        ("c.yaml", "policy: policy 'p' is also in " + str(d / "b.yaml"), 1),
    ]


def test_levels_file_errors(rule_dir: RuleDir) -> None:
    assert brief(issues_of(rule_dir({}, levels=None))) == [
        ("levels.yaml", "(file): missing: define levels", None)
    ]
    d = rule_dir({}, levels="levels: [low, low, never, 'a b']\nextra: 1\n")
    assert brief(issues_of(d)) == [
        ("levels.yaml", "extra: unknown key (allowed: levels)", 2),
        ("levels.yaml", "levels[1]: duplicate level 'low'", 1),
        ("levels.yaml", "levels[2]: 'never' is reserved", 1),
        ("levels.yaml", "levels[3]: must be a name (letters, digits, _ . -)", 1),
    ]


def test_yaml_errors_are_collected_per_file(rule_dir: RuleDir) -> None:
    d = rule_dir({"a.yaml": "policy: p\npolicy: q\n", "b.yaml": "policy: [\n"})
    found = brief(issues_of(d))
    assert found[0] == ("a.yaml", "policy: duplicate key", 2)
    assert found[1][0] == "b.yaml" and found[1][1].startswith("(syntax)")


def test_subdirectories_and_other_files_are_not_read(rule_dir: RuleDir) -> None:
    d = rule_dir({"customer.yaml": PRODUCT_CUSTOMER, "README.md": "# notes", "x/y.yaml": "- 1\n"})
    assert set(ruleset_of(d).policies) == {"customer"}


def test_not_a_directory(tmp_path: Path) -> None:
    assert brief(issues_of(tmp_path / "missing")) == [
        ("missing", "(directory): not a directory", None)
    ]


def test_action_defaults_to_drop(rule_dir: RuleDir) -> None:
    d = rule_dir({"p.yaml": policy_yaml("  - {name: a, paths: [$.a], level: internal}\n")})
    assert ruleset_of(d).policies["p"].rules[0].action is DROP


def test_filter_paths_are_general_and_simple_paths_automaton(rule_dir: RuleDir) -> None:
    fields = '  - {name: a, paths: ["$..a", "$.b[?@.c]", "$.d[1:]"], level: secret}\n'
    policy = ruleset_of(rule_dir({"p.yaml": policy_yaml(fields)})).policies["p"]
    assert [p.text for _, p in policy.general] == ["$.b[?@.c]", "$.d[1:]"]
    assert policy.automaton.start is not None


def test_too_many_automaton_states_is_a_load_error(rule_dir: RuleDir) -> None:
    fields = "".join(
        f'  - {{name: r{i}, paths: ["$..a{i}..[{i}]..b{i}"], level: secret}}\n' for i in range(10)
    )
    issues = issues_of(rule_dir({"p.yaml": policy_yaml(fields)}))
    assert [f"{i.key}: {i.message}" for i in issues] == [
        "fields: the paths need more than 4096 automaton states"
    ]
