"""The ``audit:`` key of ``gateway.yaml`` (pure: validation only, no I/O).

As PRODUCT.md writes it, ``audit`` is a list of sinks::

    audit: [stdout, {file: /var/log/gateway/audit.jsonl}, {redis_stream: "gateway:audit"}]

Each entry is one of (a table, see :data:`DICT_SINKS` and :data:`STRING_ENTRIES`):

- ``stdout`` — JSON lines on standard output;
- ``{file: PATH, max_bytes: 100MiB, backups: 5}`` — appended JSON lines with
  size-based rotation (``max_bytes: 0`` leaves rotation to logrotate; the file
  is reopened when it was moved away either way);
- ``{redis_stream: KEY, url: redis://..., maxlen: 1000000}`` — ``XADD`` with an
  approximate ``MAXLEN``; ``url`` defaults to the state backend's Redis URL;
- the string ``required`` — audit is mandatory: while a sink cannot be written
  the gateway answers 503 instead of serving unaudited requests.

Every dict entry may carry ``name`` (the ``sink`` label of
``gateway_audit_dropped_total``); the default is the sink kind, with ``#2``,
``#3``... for repeats. Unknown keys and unknown entries are errors; pydantic
error locations are list indexes (``audit[1].max_bytes``), so the config
loader's key-path/line mapping works unchanged.

Adopt it in :class:`gateway.config.Config` as ``audit: AuditConfig =
Field(default_factory=AuditConfig)``; the cross-check that a ``redis_stream``
without ``url`` has a state Redis to fall back on is
:meth:`AuditConfig.missing_redis_url`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    RootModel,
    field_validator,
)

from gateway.units import Size

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:#-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Named(_Model):
    name: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME_RE.match(v):
            raise ValueError("letters, digits and _ . : # - only")
        return v


class FileSinkConfig(_Named):
    file: str = Field(min_length=1)
    # 0: never rotate here (external logrotate; the reopen-on-move check still applies).
    max_bytes: Size = 100 * 1024**2
    backups: int = Field(default=5, ge=0, le=1000)


class RedisStreamSinkConfig(_Named):
    redis_stream: str = Field(min_length=1)
    url: str | None = None
    maxlen: int = Field(default=1_000_000, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v


SinkSpec = Literal["stdout"] | FileSinkConfig | RedisStreamSinkConfig
Entry = Literal["stdout", "required"] | FileSinkConfig | RedisStreamSinkConfig

#: Dict entries: the key that names the kind -> its model (a table, not an if chain).
DICT_SINKS: Final[dict[str, type[_Named]]] = {
    "file": FileSinkConfig,
    "redis_stream": RedisStreamSinkConfig,
}
STRING_ENTRIES: Final = ("stdout", "required")
_EXPECTED: Final = "expected stdout, required, {file: PATH} or {redis_stream: KEY}"


def _entry(value: Any) -> Any:
    # Dispatch by hand rather than with a tagged union: pydantic puts the union tag in
    # error locations (audit[1].file.max_bytes), which would not map to a YAML key path.
    # A ValidationError raised here is merged with the list index prefixed.
    if isinstance(value, _Named):
        return value
    if isinstance(value, str):
        if value in STRING_ENTRIES:
            return value
        raise ValueError(_EXPECTED)
    if isinstance(value, dict):
        kinds = [k for k in DICT_SINKS if k in value]
        if len(kinds) == 1:
            return DICT_SINKS[kinds[0]].model_validate(value)
    raise ValueError(_EXPECTED)


SinkEntry = Annotated[Entry, PlainValidator(_entry)]


class AuditConfig(RootModel[list[SinkEntry]]):
    """The validated ``audit:`` list; ``sinks`` and ``required`` are views of it."""

    model_config = ConfigDict(frozen=True)
    root: list[SinkEntry] = Field(default_factory=list)

    @field_validator("root")
    @classmethod
    def _unique_names(cls, v: list[SinkEntry]) -> list[SinkEntry]:
        names = [n for n, _ in _named(v)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sink names must be unique (repeated: {', '.join(dupes)})")
        return v

    @property
    def required(self) -> bool:
        return "required" in self.root

    @property
    def sinks(self) -> list[tuple[str, SinkSpec]]:
        """``(name, entry)`` per sink, in file order (``required`` left out)."""
        return _named(self.root)

    def missing_redis_url(self, state_redis_url: str | None) -> list[int]:
        """Indexes of ``redis_stream`` entries with no ``url`` and no state Redis to use."""
        if state_redis_url is not None:
            return []
        return [
            i
            for i, e in enumerate(self.root)
            if isinstance(e, RedisStreamSinkConfig) and e.url is None
        ]


def _named(
    entries: list[SinkEntry],
) -> list[tuple[str, SinkSpec]]:
    out: list[tuple[str, SinkSpec]] = []
    seen: dict[str, int] = {}
    for e in entries:
        if e == "required":
            continue
        if e == "stdout":
            kind, explicit = "stdout", None
        else:
            kind = "file" if isinstance(e, FileSinkConfig) else "redis_stream"
            explicit = e.name
        if explicit is not None:
            out.append((explicit, e))
            continue
        seen[kind] = seen.get(kind, 0) + 1
        out.append((kind if seen[kind] == 1 else f"{kind}#{seen[kind]}", e))
    return out
