"""``gateway audit``: query the audit trail after an incident (who saw customer X, what did Y see).

The core is pure — :func:`parse_time`, :class:`Filter`, :func:`matches`,
:func:`summarize`, :class:`Collector`, :func:`render_table` — and the readers
(:func:`read_file_lines`, :func:`read_stream`) only yield raw lines.

Rules the auditor can rely on:

- **Capped entity lists are never silently dropped.** A record keeps at most
  ``entities_cap`` customer ids and the full count in ``entities_total``; when
  the id asked for is not listed but the list was capped, the record *may*
  have included it, and it is reported apart as "possibly (entity list capped)".
- **Unreadable lines are counted, never printed** (a line that is not a valid
  record could hold anything). A line is unreadable when it is not JSON, or is
  not shaped like a record (see :func:`parse_record`).
- **Duplicates are merged.** The gateway writes every record to every sink, so
  a file and a stream of one gateway hold the same records; identical records
  are reported once (and counted as ``duplicates``).
- **A source that cannot be read fails the whole query** (naming the source,
  never its credentials): a partial answer would read as a complete one.
- Times: ``--since`` is inclusive, ``--until`` exclusive; RFC 3339 with an
  offset, or ``YYYY-MM-DD`` meaning midnight UTC.
- Text output escapes non-printable characters: paths come from clients and
  must not drive the auditor's terminal.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.audit.record import DECISIONS
from gateway.audit.sinks import RedisStreamSink

Match = Literal["yes", "maybe", "no"]

#: Stream entries fetched per XRANGE call.
PAGE: Final = 1000

_DATE_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RFC3339_RE: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$"
)


class SourceError(Exception):
    """A source that cannot be read; the message names the source."""


# --- time ---------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """RFC 3339 (an offset is required) or ``YYYY-MM-DD`` (midnight UTC) -> aware UTC datetime."""
    text = text.strip()
    if _DATE_RE.match(text):
        try:
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        except ValueError:
            raise ValueError(f"not a valid date: {text!r}") from None
    if not _RFC3339_RE.match(text):
        raise ValueError(
            f"expected RFC 3339 with an offset (2026-11-24T08:00:00Z) or YYYY-MM-DD: {text!r}"
        )
    normal = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    normal = normal[:10] + "T" + normal[11:]
    try:
        return datetime.fromisoformat(normal).astimezone(UTC)
    except ValueError:
        raise ValueError(f"not a valid time: {text!r}") from None


def _format_time(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def record_time(record: Mapping[str, Any]) -> datetime:
    """The record's ``ts`` (records come from :func:`parse_record`, so it parses)."""
    return parse_time(str(record["ts"]))


# --- records --------------------------------------------------------------------------


def _is_counts(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool)
        for k, n in value.items()
    )


def _valid(record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    ts = record.get("ts")
    if not isinstance(ts, str):
        return False
    try:
        parse_time(ts)
    except ValueError:
        return False
    fields = record.get("fields")
    entities = record.get("entities")
    total = record.get("entities_total")
    count = record.get("records")
    return (
        isinstance(record.get("decision"), str)
        and all(isinstance(record.get(k), str | None) for k in ("subject", "route", "path"))
        and isinstance(record.get("status"), int)
        and isinstance(count, int)
        and isinstance(entities, list)
        and all(isinstance(e, str) for e in entities)
        and isinstance(total, int)
        and total >= len(entities)
        and isinstance(fields, dict)
        and all(_is_counts(v) for v in fields.values())
    )


def parse_record(line: bytes) -> dict[str, Any] | None:
    """One JSON line -> the record, or ``None`` when it is not a readable audit record."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if _valid(record) else None


# --- filtering ------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """What the auditor asks; ``None`` matches anything. ``since`` inclusive, ``until`` not."""

    customer: str | None = None
    subject: str | None = None
    route: str | None = None
    decision: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.decision is not None and self.decision not in DECISIONS:
            known = ", ".join(sorted(DECISIONS))
            raise ValueError(f"unknown decision {self.decision!r} (one of {known})")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("--since must be before --until")

    def as_dict(self) -> dict[str, Any]:
        return {
            "customer": self.customer,
            "subject": self.subject,
            "route": self.route,
            "decision": self.decision,
            "since": None if self.since is None else _format_time(self.since),
            "until": None if self.until is None else _format_time(self.until),
        }


def matches(record: Mapping[str, Any], flt: Filter) -> Match:
    """``yes``, ``no``, or ``maybe``: the customer id is not listed but the list was capped."""
    for key, want in (("subject", flt.subject), ("route", flt.route), ("decision", flt.decision)):
        if want is not None and record.get(key) != want:
            return "no"
    if flt.since is not None or flt.until is not None:
        try:
            ts = record_time(record)
        except (KeyError, ValueError):
            return "no"
        if flt.since is not None and ts < flt.since:
            return "no"
        if flt.until is not None and ts >= flt.until:
            return "no"
    if flt.customer is None:
        return "yes"
    entities = record.get("entities") or []
    if flt.customer in entities:
        return "yes"
    total = record.get("entities_total")
    if isinstance(total, int) and total > len(entities):
        return "maybe"
    return "no"


# --- summary --------------------------------------------------------------------------


def _ranked(counter: Counter[Any], key: str) -> list[dict[str, Any]]:
    # Most first, then by name (None, an anonymous caller, sorts first).
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0] is not None, str(kv[0])))
    return [{key: k, "times": n} for k, n in items]


def summarize(records: Iterable[Mapping[str, Any]], flt: Filter) -> dict[str, Any]:
    """Counts over ``records`` (each is matched against ``flt`` here; ``no`` ones are ignored).

    Always ``requests`` (certain matches), ``possible`` (capped ``maybe`` ones)
    and ``decisions``; with ``flt.customer`` also ``customer`` (who received the
    customer, per subject); with ``flt.subject`` also ``subject`` (what they
    received: records, distinct customers, routes, decisions, revealed per rule).
    """
    yes: list[Mapping[str, Any]] = []
    maybe: list[Mapping[str, Any]] = []
    for r in records:
        m = matches(r, flt)
        if m == "yes":
            yes.append(r)
        elif m == "maybe":
            maybe.append(r)
    decisions = Counter(str(r.get("decision")) for r in yes)
    out: dict[str, Any] = {
        "requests": len(yes),
        "possible": len(maybe),
        "decisions": dict(sorted(decisions.items())),
    }
    if flt.customer is not None:
        out["customer"] = {
            "id": flt.customer,
            "received_by": _ranked(Counter(r.get("subject") for r in yes), "subject"),
            "possibly_received_by": _ranked(Counter(r.get("subject") for r in maybe), "subject"),
        }
    if flt.subject is not None:
        customers: set[str] = set()
        capped = 0
        revealed: Counter[str] = Counter()
        for r in yes:
            entities = r.get("entities") or []
            customers.update(entities)
            if int(r.get("entities_total") or 0) > len(entities):
                capped += 1
            revealed.update((r.get("fields") or {}).get("revealed") or {})
        out["subject"] = {
            "subject": flt.subject,
            "requests": len(yes),
            "records": sum(int(r.get("records") or 0) for r in yes),
            "customers": len(customers),
            # With capped lists the distinct count is a lower bound.
            "customers_capped_requests": capped,
            "routes": _ranked(Counter(r.get("route") for r in yes), "route"),
            "decisions": dict(sorted(decisions.items())),
            "revealed": dict(sorted(revealed.items())),
        }
    return out


# --- collecting -----------------------------------------------------------------------


@dataclass
class Collector:
    """Feed raw lines per source; keeps only matching records (deduplicated)."""

    filter: Filter
    found: list[dict[str, Any]] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    _seen: set[bytes] = field(default_factory=set)

    def add_source(self, source: str) -> None:
        self.lines.setdefault(source, 0)
        self.unreadable.setdefault(source, 0)

    def feed(self, source: str, line: bytes) -> None:
        self.add_source(source)
        if not line.strip():
            return
        self.lines[source] += 1
        record = parse_record(line)
        if record is None:
            self.unreadable[source] += 1
            return
        if matches(record, self.filter) == "no":
            return
        key = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        self.found.append(record)

    def result(self) -> dict[str, Any]:
        """The whole answer (what ``--format json`` prints)."""
        ordered = sorted(self.found, key=record_time)
        return {
            "filter": self.filter.as_dict(),
            "sources": [
                {"source": s, "lines": n, "unreadable": self.unreadable[s]}
                for s, n in self.lines.items()
            ],
            "unreadable": sum(self.unreadable.values()),
            "duplicates": self.duplicates,
            "matches": [r for r in ordered if matches(r, self.filter) == "yes"],
            "possible": [r for r in ordered if matches(r, self.filter) == "maybe"],
            "summary": summarize(ordered, self.filter),
        }


# --- text output ----------------------------------------------------------------------


def clean(value: object) -> str:
    """Printable text: control, format and other non-printable characters are escaped."""
    text = "-" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


_COLUMNS: Final = ("ts", "subject", "route", "decision", "status", "records", "path")


def _table(records: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [[c.upper() for c in _COLUMNS]]
    rows += [[clean(r.get(c)) for c in _COLUMNS] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ]


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{clean(k)} {n}" for k, n in counts.items()) or "none"


def _ranking(items: Sequence[Mapping[str, Any]], key: str) -> str:
    return ", ".join(f"{clean(i[key])} {i['times']}" for i in items) or "none"


def render_table(doc: Mapping[str, Any]) -> str:
    """The text answer for a document from :meth:`Collector.result`."""
    out: list[str] = []
    matched, possible, summary = doc["matches"], doc["possible"], doc["summary"]
    if matched:
        out += _table(matched)
    else:
        out.append("no matching records")
    if possible:
        out += ["", f"possibly (entity list capped): {len(possible)} record(s)"]
        out += _table(possible)
    out += ["", f"requests: {summary['requests']}", f"decisions: {_counts(summary['decisions'])}"]
    if "customer" in summary:
        c = summary["customer"]
        out.append(
            f"customer {clean(c['id'])} received by: {_ranking(c['received_by'], 'subject')}"
        )
        if c["possibly_received_by"]:
            out.append(
                "possibly received by (entity list capped): "
                + _ranking(c["possibly_received_by"], "subject")
            )
    if "subject" in summary:
        s = summary["subject"]
        customers = str(s["customers"])
        if s["customers_capped_requests"]:
            customers += (
                f" (at least: {s['customers_capped_requests']} request(s) had capped entity lists)"
            )
        out += [
            f"subject {clean(s['subject'])}: {s['requests']} request(s), "
            f"{s['records']} record(s) received",
            f"  distinct customers: {customers}",
            f"  routes: {_ranking(s['routes'], 'route')}",
            f"  decisions: {_counts(s['decisions'])}",
            f"  revealed in clear (per rule): {_counts(s['revealed'])}",
        ]
    if doc["duplicates"]:
        out.append(f"duplicates merged: {doc['duplicates']} (the same record in several sinks)")
    if doc["unreadable"]:
        where = ", ".join(
            f"{clean(s['source'])} {s['unreadable']}" for s in doc["sources"] if s["unreadable"]
        )
        out.append(f"warning: {doc['unreadable']} unreadable line(s) skipped ({where})")
    return "\n".join(out) + "\n"


# --- sources --------------------------------------------------------------------------


_BACKUP_RE: Final = r"^{}\.(\d+)(\.gz)?$"


def with_backups(path: str | Path) -> list[Path]:
    """``path``'s rotated backups (``path.N``, ``path.N.gz``), oldest first, then ``path``.

    :class:`~gateway.audit.sinks.FileSink` names backups like RotatingFileHandler:
    ``.1`` is the newest, so the highest number is the oldest.
    """
    path = Path(path)
    pattern = re.compile(_BACKUP_RE.format(re.escape(path.name)))
    backups: list[tuple[int, Path]] = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError as exc:
        raise SourceError(f"{path.parent}: cannot list: {exc.strerror}") from None
    for p in siblings:
        m = pattern.match(p.name)
        if m:
            backups.append((int(m.group(1)), p))
    return [p for _, p in sorted(backups, key=lambda b: -b[0])] + [path]


def read_file_lines(paths: Iterable[str | Path]) -> Iterator[bytes]:
    """Raw lines (newline stripped) of each file in turn; ``.gz`` files are decompressed.

    Raises :class:`SourceError` naming the file that cannot be read.
    """
    for path in paths:
        p = Path(path)
        try:
            with gzip.open(p, "rb") if p.suffix == ".gz" else p.open("rb") as f:
                for line in f:
                    yield line.rstrip(b"\r\n")
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise SourceError(f"{p}: cannot read: {reason}") from None
        except (EOFError, zlib.error):
            raise SourceError(f"{p}: cannot read: corrupt gzip data") from None


def redact_url(url: str) -> str:
    """``url`` without its password (source names end up in reports)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _after(entry_id: str) -> str:
    # The smallest id after entry_id (portable; "(id" needs Redis 6.2).
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


async def read_stream(url: str, key: str, *, page: int = PAGE) -> AsyncIterator[bytes]:
    """The ``record`` field of every entry of stream ``key``, oldest first (XRANGE in pages).

    An entry without that field yields ``b"\\x00"`` (so :class:`Collector` counts
    it unreadable). A missing key, a key that is not a stream or a Redis that
    cannot be reached raise :class:`SourceError`.
    """
    name = f"redis stream {key} at {redact_url(url)}"
    client = aioredis.Redis.from_url(url, socket_timeout=10.0, socket_connect_timeout=5.0)
    field_name = RedisStreamSink.FIELD.encode()
    try:
        kind = await client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind == "none":
            raise SourceError(f"{name}: no such stream")
        if kind != "stream":
            raise SourceError(f"{name}: not a stream (a {kind})")
        start = "-"
        while True:
            entries = await client.xrange(key, min=start, max="+", count=page) or []
            for _, fields in entries:
                value = (fields or {}).get(field_name)
                yield value if isinstance(value, bytes) else b"\x00"
            if len(entries) < page:
                return
            last = entries[-1][0]
            start = _after(last.decode() if isinstance(last, bytes) else str(last))
    except (RedisError, OSError) as exc:
        raise SourceError(f"{name}: cannot read: {type(exc).__name__}: {exc}") from None
    finally:
        await client.aclose()


@dataclass(frozen=True)
class FileSource:
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class StreamSource:
    url: str
    key: str

    @property
    def name(self) -> str:
        return f"redis stream {self.key} at {redact_url(self.url)}"


Source = FileSource | StreamSource


async def collect(sources: Sequence[Source], flt: Filter) -> dict[str, Any]:
    """Read every source and answer (raises :class:`SourceError` on the first bad one)."""
    collector = Collector(flt)
    for source in sources:
        if isinstance(source, FileSource):
            for path in source.paths:
                collector.add_source(str(path))
                for line in read_file_lines([path]):
                    collector.feed(str(path), line)
        else:
            collector.add_source(source.name)
            async for line in read_stream(source.url, source.key):
                collector.feed(source.name, line)
    return collector.result()
