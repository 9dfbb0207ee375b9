"""YAML loading that remembers where every key came from.

Loaders validate plain Python data, but their error messages should point at a
line in the user's file. :func:`load_yaml` returns the data together with a map
from key path (``("routes", 2, "upstream")``) to 1-based line number, built
from PyYAML's node marks. Duplicate mapping keys are an error: YAML parsers
silently keep the last one, which in a rule file would hide a rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError, ConfigIssue, KeyPath, format_key_path


@dataclass
class YamlDocument:
    file: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path`` or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), None)

    def issue(self, path: KeyPath, message: str) -> ConfigIssue:
        return ConfigIssue(self.file, format_key_path(path), message, self.line_of(path))


class _Loader(yaml.SafeLoader):
    """SafeLoader (no object construction) that rejects duplicate keys."""


def _walk(
    node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], issues: list[ConfigIssue], file: str
) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*path, key)
            if key in seen:
                issues.append(
                    ConfigIssue(
                        file, format_key_path(child), "duplicate key", key_node.start_mark.line + 1
                    )
                )
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines, issues, file)
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines, issues, file)


def parse_yaml(text: str, file: str) -> YamlDocument:
    """Parse YAML text; syntax errors and duplicate keys raise :class:`ConfigError`."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError.single(file, "(syntax)", str(exc.problem or exc), line) from None
    except yaml.YAMLError as exc:
        raise ConfigError.single(file, "(syntax)", str(exc)) from None
    doc = YamlDocument(file, data)
    if node is not None:
        issues: list[ConfigIssue] = []
        _walk(node, (), doc.lines, issues, file)
        if issues:
            raise ConfigError(issues)
    return doc


def load_yaml(path: str | Path) -> YamlDocument:
    """Read and parse one YAML file; an unreadable file is a :class:`ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError.single(str(p), "(file)", f"cannot read: {reason}") from None
    return parse_yaml(text, str(p))
