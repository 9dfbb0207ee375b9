"""Configuration errors that name their file, key path and (when known) line.

Every loader in the gateway (``gateway.yaml``, rule files, test cases) reports
problems as :class:`ConfigIssue` values collected into one :class:`ConfigError`,
so ``gateway check`` can print all of them at once and a bad reload can answer
with the full list. Messages carry key names and config values only, never
customer data or resolved secrets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

KeyPath = tuple[str | int, ...]


def format_key_path(path: Sequence[str | int]) -> str:
    """``("routes", 2, "upstream")`` -> ``routes[2].upstream``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}"


class ConfigError(Exception):
    """One or more problems found while loading configuration or rules."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))

    @classmethod
    def single(cls, file: str, key: str, message: str, line: int | None = None) -> ConfigError:
        return cls([ConfigIssue(file, key, message, line)])
