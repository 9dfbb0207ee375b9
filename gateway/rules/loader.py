"""Loading ``rules/``: levels, policies, records and quotas, validated all at once.

Layout: ``levels.yaml`` (``levels: [...]``, lowest first) and one policy per
other ``*.yaml``/``*.yml`` file at the top of the directory. Subdirectories
(``tests/`` holds test cases) are not read. Every problem found becomes a
:class:`ConfigIssue` naming the file, the key path and the line, and
:func:`load_rules` raises one :class:`ConfigError` with all of them.

Precedence: the same path (same syntax tree: ``$.a`` and ``$['a']`` are the
same) in two rules is an error. Different paths that select the same value at
run time (``$..number`` and ``$..accounts[*].number``) are resolved by
strength: drop > redact > hash > mask = round > keep/clear, then the rule
written first. The stronger rule alone is applied and counted.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, ConfigIssue, KeyPath
from gateway.jsonpath import JSONPath, JSONPathSyntaxError, Query, compile_path
from gateway.rules.actions import ACTION_NAMES, DROP, Action, is_single_action, parse_action
from gateway.rules.automaton import Automaton, TooComplex
from gateway.rules.model import FieldRule, NeedToKnow, RecordSpec
from gateway.rules.quotas import parse_quotas
from gateway.rules.ruleset import Policy, RuleSet
from gateway.yamlfile import YamlDocument, parse_yaml

LEVELS_FILES = ("levels.yaml", "levels.yml")
POLICY_KEYS = ("policy", "description", "unlisted", "fields", "records", "quotas")
FIELD_KEYS = ("name", "description", "paths", "level", "action", "need_to_know")
NEVER = "never"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class _Doc:
    """One YAML file plus the issue list it reports into."""

    def __init__(self, doc: YamlDocument, issues: list[ConfigIssue]) -> None:
        self.doc = doc
        self.issues = issues

    def err(self, path: KeyPath, message: str) -> None:
        self.issues.append(self.doc.issue(path, message))

    def keys(self, data: dict[Any, Any], path: KeyPath, allowed: tuple[str, ...]) -> None:
        for k in data:
            if k not in allowed:
                self.err((*path, str(k)), f"unknown key (allowed: {', '.join(allowed)})")

    def name(self, data: dict[Any, Any], path: KeyPath, key: str) -> str | None:
        v = data.get(key)
        if v is None:
            self.err(path, f"missing {key!r}")
            return None
        if not isinstance(v, str) or not _NAME.fullmatch(v):
            self.err((*path, key), "must be a name (letters, digits, _ . -)")
            return None
        return v

    def path(self, v: Any, path: KeyPath) -> JSONPath | None:
        if not isinstance(v, str):
            self.err(path, "must be a JSONPath string")
            return None
        try:
            return compile_path(v)
        except JSONPathSyntaxError as exc:
            self.err(path, f"invalid JSONPath {v!r}: {exc.message} at offset {exc.position}")
            return None


def _read(path: Path, issues: list[ConfigIssue]) -> tuple[YamlDocument, bytes] | None:
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        issues.append(ConfigIssue(str(path), "(file)", f"cannot read: {exc.strerror}"))
        return None
    except UnicodeDecodeError:
        issues.append(ConfigIssue(str(path), "(file)", "not UTF-8 text"))
        return None
    try:
        return parse_yaml(text, str(path)), raw
    except ConfigError as exc:
        issues.extend(exc.issues)
        return None


def _levels(doc: _Doc) -> tuple[str, ...]:
    data = doc.doc.data
    if not isinstance(data, dict) or "levels" not in data:
        doc.err((), "expected `levels: [lowest, ..., highest]`")
        return ()
    doc.keys(data, (), ("levels",))
    raw = data["levels"]
    if not isinstance(raw, list) or not raw:
        doc.err(("levels",), "must be a non-empty list of level names, lowest first")
        return ()
    out: list[str] = []
    for i, name in enumerate(raw):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            doc.err(("levels", i), "must be a name (letters, digits, _ . -)")
        elif name == NEVER or name in ACTION_NAMES:
            doc.err(("levels", i), f"{name!r} is reserved")
        elif name in out:
            doc.err(("levels", i), f"duplicate level {name!r}")
        else:
            out.append(name)
    return tuple(out)


class _PolicyLoader:
    def __init__(self, doc: _Doc, levels: tuple[str, ...], hash_key: bytes) -> None:
        self.d = doc
        self.issues_at_start = len(doc.issues)
        self.levels = levels
        self.hash_key = hash_key
        self.paths_seen: dict[Query, str] = {}

    def level(self, v: Any, path: KeyPath, allow_never: bool) -> int | str:
        """A level index, ``NEVER``, or ``"?"`` after reporting a problem."""
        if allow_never and v == NEVER:
            return NEVER
        if isinstance(v, str) and v in self.levels:
            return self.levels.index(v)
        if self.levels:  # without levels.yaml every name would be reported
            self.d.err(path, f"unknown level {v!r} (levels: {', '.join(self.levels)})")
        return "?"

    def load(self) -> Policy | None:
        d = self.d
        data = d.doc.data
        d.keys(data, (), POLICY_KEYS)
        name = d.name(data, (), "policy")
        unlisted = data.get("unlisted", "keep")
        if unlisted not in ("keep", "drop"):
            d.err(("unlisted",), "must be keep or drop")
        description = data.get("description")
        if description is not None and not isinstance(description, str):
            d.err(("description",), "must be text")
        rules: list[FieldRule] = []
        fields = data.get("fields", [])
        if not isinstance(fields, list):
            d.err(("fields",), "must be a list of field rules")
            fields = []
        names: set[str] = set()
        for i, raw in enumerate(fields):
            rule = self.field(i, raw, len(rules), names)
            if rule is not None:
                rules.append(rule)
        records = self.records(data.get("records"))
        quotas = parse_quotas(data.get("quotas"), d.err)
        simple = [(r.index, p) for r in rules for p in r.paths if p.is_simple]
        general = tuple((r.index, p) for r in rules for p in r.paths if not p.is_simple)
        try:
            automaton = Automaton(simple)
        except TooComplex as exc:
            d.err(("fields",), str(exc))
            return None
        if name is None or len(d.issues) != self.issues_at_start:
            return None
        conditions: list[NeedToKnow] = []
        for r in rules:
            if r.need_to_know is not None and r.need_to_know not in conditions:
                conditions.append(r.need_to_know)
        condition_of = tuple(
            None if r.need_to_know is None else conditions.index(r.need_to_know) for r in rules
        )
        return Policy(
            name=name,
            file=d.doc.file,
            unlisted=str(unlisted),
            rules=tuple(rules),
            records=records,
            quotas=quotas,
            automaton=automaton,
            general=general,
            conditions=tuple(conditions),
            condition_of=condition_of,
            description=description if isinstance(description, str) else None,
        )

    def field(self, i: int, raw: Any, index: int, names: set[str]) -> FieldRule | None:
        d = self.d
        at: KeyPath = ("fields", i)
        if not isinstance(raw, dict):
            d.err(at, "expected a field rule {name, paths, level, action}")
            return None
        before = len(d.issues)
        d.keys(raw, at, FIELD_KEYS)
        name = d.name(raw, at, "name")
        if name is not None:
            if name in names:
                d.err((*at, "name"), f"duplicate rule name {name!r}")
            names.add(name)
        paths = self.paths(raw.get("paths"), at, name or f"fields[{i}]")
        if "level" not in raw:
            d.err(at, "missing 'level' (a level name or never)")
            level: int | str = "?"
        else:
            level = self.level(raw["level"], (*at, "level"), allow_never=True)
        need = self.need_to_know(raw.get("need_to_know"), at, level)
        action, per_level = self.action(raw.get("action", "drop"), (*at, "action"), level, need)
        if len(d.issues) != before or name is None or level == "?":
            return None
        return FieldRule(
            name=name,
            index=index,
            paths=paths,
            level=level if isinstance(level, int) else None,
            action=action or DROP,
            per_level=per_level,
            need_to_know=need,
            line=d.doc.line_of(at),
        )

    def paths(self, raw: Any, at: KeyPath, rule: str) -> tuple[JSONPath, ...]:
        if not isinstance(raw, list) or not raw:
            self.d.err(
                (*at, "paths") if raw is not None else at, "needs `paths`: a list of JSONPaths"
            )
            return ()
        out = []
        for j, text in enumerate(raw):
            p = self.d.path(text, (*at, "paths", j))
            if p is None:
                continue
            other = self.paths_seen.get(p.query)
            if other is not None:
                self.d.err(
                    (*at, "paths", j),
                    f"{text!r} is already selected by rule {other!r}; give a value one rule",
                )
                continue
            self.paths_seen[p.query] = rule
            out.append(p)
        return tuple(out)

    def need_to_know(self, raw: Any, at: KeyPath, level: int | str) -> NeedToKnow | None:
        if raw is None:
            return None
        d = self.d
        where = (*at, "need_to_know")
        if not isinstance(raw, dict):
            d.err(where, "expected {claim: NAME, any_of: [values]}")
            return None
        d.keys(raw, where, ("claim", "any_of"))
        claim, any_of = raw.get("claim"), raw.get("any_of")
        ok = True
        if not isinstance(claim, str) or not claim:
            d.err((*where, "claim"), "must be a claim name")
            ok = False
        if (
            not isinstance(any_of, list)
            or not any_of
            or not all(isinstance(v, str) and v for v in any_of)
        ):
            d.err((*where, "any_of"), "must be a non-empty list of strings")
            ok = False
        if level == NEVER:
            d.err(where, "has no effect with level: never (nobody sees the value in clear)")
            ok = False
        return NeedToKnow(str(claim), tuple(any_of)) if ok else None  # type: ignore[arg-type]

    def action(
        self, raw: Any, at: KeyPath, level: int | str, need: NeedToKnow | None
    ) -> tuple[Action | None, tuple[tuple[int, Action], ...]]:
        d = self.d
        if is_single_action(raw):
            action, problems = parse_action(raw, self.hash_key)
            for sub, msg in problems:
                d.err((*at, *sub), msg)
            return action, ()
        if not isinstance(raw, dict) or not raw:
            d.err(at, f"expected an action ({', '.join(ACTION_NAMES)}) or a per-level map")
            return None, ()
        entries: list[tuple[int, Action]] = []
        for lvl_name, value in raw.items():
            where = (*at, str(lvl_name))
            idx = self.level(lvl_name, where, allow_never=False)
            if not is_single_action(value):
                d.err(where, "expected one action (per-level maps do not nest)")
                continue
            action, problems = parse_action(value, self.hash_key)
            for sub, msg in problems:
                d.err((*where, *sub), msg)
            if not isinstance(idx, int) or action is None:
                continue
            if isinstance(level, int) and need is None and idx >= level:
                d.err(
                    where,
                    f"never applies: clearance {lvl_name} is at or above the rule's level "
                    f"{self.levels[level]} and sees the value in clear",
                )
                continue
            entries.append((idx, action))
        return DROP, tuple(sorted(entries, key=lambda e: e[0]))

    def records(self, raw: Any) -> RecordSpec | None:
        if raw is None:
            return None
        d = self.d
        if not isinstance(raw, dict):
            d.err(("records",), "expected {path: JSONPATH, id: MEMBER}")
            return None
        d.keys(raw, ("records",), ("path", "id"))
        path = d.path(raw.get("path"), ("records", "path"))
        id_key = raw.get("id")
        if not isinstance(id_key, str) or not id_key:
            d.err(("records", "id"), "must be the member name of the record id")
            return None
        return RecordSpec(path, id_key) if path is not None else None


def compile_records(path: str, id_key: str) -> RecordSpec:
    """A record spec for a route (``records: {path, id}`` on a route); ValueError if bad."""
    try:
        return RecordSpec(compile_path(path), id_key)
    except JSONPathSyntaxError as exc:
        raise ValueError(f"invalid JSONPath {path!r}: {exc}") from None


def load_rules(directory: str | Path, *, hash_key: bytes) -> RuleSet:
    """Load and validate every rule file; raise :class:`ConfigError` listing all problems."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError.single(str(root), "(directory)", "not a directory")
    issues: list[ConfigIssue] = []
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))
    loaded: list[tuple[Path, YamlDocument, bytes]] = []
    for p in files:
        got = _read(p, issues)
        if got is not None:
            loaded.append((p, *got))
    level_docs = [(p, doc) for p, doc, _ in loaded if p.name in LEVELS_FILES]
    levels: tuple[str, ...] = ()
    if not level_docs:
        if not any(p.name in LEVELS_FILES for p in files):
            issues.append(
                ConfigIssue(str(root / "levels.yaml"), "(file)", "missing: define levels")
            )
    else:
        if len(level_docs) > 1:
            issues.append(ConfigIssue(str(level_docs[1][0]), "(file)", "levels defined twice"))
        levels = _levels(_Doc(level_docs[0][1], issues))
    policies: dict[str, Policy] = {}
    for p, doc, _ in loaded:
        if p.name in LEVELS_FILES:
            continue
        if not isinstance(doc.data, dict) or "policy" not in doc.data:
            issues.append(
                doc.issue((), "not a policy: expected a `policy:` key (test cases go in tests/)")
            )
            continue
        policy = _PolicyLoader(_Doc(doc, issues), levels, hash_key).load()
        if policy is None:
            continue
        if policy.name in policies:
            other = policies[policy.name].file
            issues.append(doc.issue(("policy",), f"policy {policy.name!r} is also in {other}"))
            continue
        policies[policy.name] = policy
    if issues:
        raise ConfigError(issues)
    digest = hashlib.sha256()
    for p, _, raw in loaded:
        digest.update(p.name.encode() + b"\0" + hashlib.sha256(raw).digest())
    return RuleSet(digest.hexdigest()[:16], levels, policies, str(root))
