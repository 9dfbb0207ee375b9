"""Record-by-record masking of large array responses, with bounded memory.

Rules
=====

A response streams when its route has a policy whose plan the native pass
serves (:mod:`gateway.rules.native`), its records path names an array right
under the root (``$.K[*]``, or ``$[*]`` for a top-level array), and the body
outgrows ``limits.stream_after`` (smaller bodies take the buffered path, with
its exact quota semantics). Then:

* the envelope (members of the root object other than ``K``) and each element
  of the array are masked one at a time by the native pass, starting in the
  automaton state of their position: the bytes written are exactly what the
  buffered path would write for the whole body;
* the elements a feed completes are masked in one native call
  (``_fastmask.mask_elements``: each exactly as ``mask`` masks it alone, in the
  states ``step`` gives its index), which also reads the ``,`` and ``]`` between
  them; the envelope stays here;
* memory is bounded by the largest single element or envelope member, which is
  capped by ``limits.max_response_body`` like a buffered body;
* anything the buffered path would reject (invalid JSON, a truncated body) —
  and, here, anything the native pass declines for one element, a duplicate or
  escaped member name in the envelope — stops the stream. Before the first
  byte is sent, that is the usual 502; after, the connection is aborted
  mid-body (no terminating chunk), so the caller never receives a complete
  response holding bytes the policy has not seen;
* the records of each flushed part are accounted (quotas) before it is sent:
  a stream that would take the caller over a ``max_*`` is cut there.

The audit record of a streamed response lists at most :data:`ID_CAP` distinct
record ids (its ``entities_total`` counts those); the quotas see every id.

An allow-list skeleton (``unlisted: drop`` with no rule on ``K``) is held back
until its first element survives, so a records array emptied by the policy is
removed exactly as the buffered path removes it.
"""

from __future__ import annotations

from typing import Final

try:
    from gateway import _fastmask  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - built by `pip install -e .`
    _fastmask = None
from gateway.jsoncodec import DEFAULT_MAX_DEPTH, Number
from gateway.jsonpath._ast import NameSel, WildcardSel
from gateway.rules.model import NO_RECORDS, Records, RecordSpec
from gateway.rules.plan import MaskResult, Plan

_WS: Final = b" \t\r\n"
# Distinct record ids a stream remembers for the audit record (memory stays bounded
# however many records pass); every id still reaches the quota accounting.
ID_CAP: Final = 10_000
# Where the records array stands between feeds, as _fastmask.mask_elements numbers it
# (after '[', after ',', after an element; it answers _CLOSED once past the ']').
_WHERE: Final = {"elements": 0, "element": 1, "after_element": 2}
_STATE: Final = ("elements", "element", "after_element")
_CLOSED: Final = 3


class NotStreamable(Exception):
    """The plan or the body's shape cannot stream; nothing has been produced yet."""


class StreamError(Exception):
    """The body cannot be masked safely; ``reason`` is a metric label (never content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def records_key(spec: RecordSpec | None) -> bytes | bool | None:
    """``K`` for ``$.K[*]``, None for ``$[*]``, False when the records do not stream."""
    if spec is None or spec.native is None:
        return False
    segs = spec.path.query.segments
    if not segs or not isinstance(segs[-1].selectors[0], WildcardSel):
        return False
    if len(segs) == 1:
        return None
    first = segs[0].selectors[0]
    if len(segs) == 2 and isinstance(first, NameSel):
        return first.name.encode("utf-8", "surrogatepass")
    return False


class RecordStream:
    """Feed upstream bytes, get masked bytes; :meth:`finish` at the end of the body."""

    def __init__(self, plan: Plan, spec: RecordSpec, *, max_value: int) -> None:
        key = records_key(spec)
        if plan.native is None or key is False:
            raise NotStreamable
        fm = _fastmask
        self._plan = plan
        self._prog = plan.native
        self._rec = spec.native
        self._id_key = spec.id_bytes
        self._key: bytes | None = key  # type: ignore[assignment]
        self._max_value = max_value
        self._allow = plan.allowlist
        root = fm.state_info(self._prog, 0)[2]
        rroot = fm.state_info(self._rec, 0)[2]
        self._root, self._rroot = root, rroot
        self.counts = [0] * (len(plan.outcomes) + 1)
        # The records array: its state, and how its elements are walked.
        if key is None:
            arr, rarr, depth = root, rroot, 1
        else:
            arr, rarr, depth = fm.step(self._prog, root, key), fm.step(self._rec, rroot, key), 2
        outcome, live, _ = fm.state_info(self._prog, arr)
        self._arr, self._rarr = arr, rarr
        self._arr_outcome = outcome
        if outcome >= 0:
            if plan.outcomes[outcome].kind not in ("reveal", "keep"):
                raise NotStreamable  # the whole array is dropped or replaced: buffer it
            self._el_allow, self._skeleton = False, False
        elif key is not None and not live:
            raise NotStreamable
        else:
            self._el_allow, self._skeleton = self._allow, self._allow and key is not None
        self._el_depth = DEFAULT_MAX_DEPTH - depth
        self._member_depth = DEFAULT_MAX_DEPTH - 1
        self._buf = bytearray()
        self._pos = 0
        self._state = "start"
        self._names: set[bytes] = set()
        self._members_out = 0
        self._index = 0
        self._kept = 0
        self._pending = b""  # held skeleton prefix
        self.records = 0
        self._ids: dict[str, None] = {}
        self._new_records = 0
        self._new_ids: list[str] = []
        self.started = False  # output has been produced

    # -- results ---------------------------------------------------------------------------
    def take_records(self) -> tuple[int, list[str]]:
        """Records (and their ids) produced since the last call: to account before sending."""
        n, ids = self._new_records, self._new_ids
        self._new_records, self._new_ids = 0, []
        return n, ids

    def result(self) -> MaskResult:
        found = Records(self.records, tuple(self._ids)) if self._rec is not None else NO_RECORDS
        return MaskResult(None, self._plan._fields(self.counts), found)

    # -- input -----------------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = self._run(final=False)
        if self._pos:
            # Keep only the unfinished value: what is left is at most one record.
            del self._buf[: self._pos]
            self._pos = 0
        if len(self._buf) - self._pos > self._max_value:
            raise StreamError("too_large")
        return out

    def finish(self) -> bytes:
        out = self._run(final=True)
        if self._state != "end":
            raise StreamError("truncated")
        return out

    # -- the envelope ----------------------------------------------------------------------
    def _skip_ws(self) -> bool:
        """Skip whitespace; True when a byte is available."""
        buf, pos = self._buf, self._pos
        n = len(buf)
        while pos < n and buf[pos] in _WS:
            pos += 1
        self._pos = pos
        return pos < n

    def _value(self, final: bool) -> tuple[int, int] | None:
        """(start, end) of the next complete value, None when more input is needed."""
        if not self._skip_ws():
            return None
        end = _fastmask.value_end(self._buf, self._pos, final)
        if end == -2:
            raise StreamError("invalid_json")
        if end == -1:
            return None
        return self._pos, end

    def _mask(
        self, start: int, end: int, ms: int, rs: int, allow: bool, depth: int
    ) -> bytes | None:
        """One value masked from its automaton state; None when the policy removes it."""
        with memoryview(self._buf) as view, view[start:end] as part:
            got = _fastmask.mask(
                self._prog, self._rec, self._id_key, part, depth, Number, ms, rs, allow
            )
        if got is None:
            raise StreamError("invalid_json")  # or a shape only the reference can answer for
        out, counts, n, ids, dropped = got
        self._account(counts, n, ids)
        return None if dropped else out

    def _account(self, counts: list[int], n: int, ids: list[str]) -> None:
        """Add what the native pass counted: fields, records, and ids new to the stream."""
        for i, c in enumerate(counts):
            if c:
                self.counts[i] += c
        if n:
            self.records += n
            self._new_records += n
            known = self._ids
            for rid in ids:
                if rid not in known:
                    self._new_ids.append(rid)
                    if len(known) < ID_CAP:
                        known[rid] = None

    def _run(self, final: bool) -> bytes:
        out: list[bytes] = []
        buf = self._buf
        fm = _fastmask
        while True:
            state = self._state
            if state == "end":
                if self._skip_ws():
                    raise StreamError("invalid_json")
                break
            if not self._skip_ws():
                break
            c = buf[self._pos]
            if state == "start":
                want = ord("[") if self._key is None else ord("{")
                if c != want:
                    raise NotStreamable  # nothing produced yet: the buffered path decides
                self._pos += 1
                self.started = True
                out.append(bytes((c,)))
                self._state = "elements" if self._key is None else "first_member"
            elif state in ("first_member", "member"):
                if state == "first_member" and c == ord("}"):
                    self._pos += 1
                    out.append(b"}")
                    self._state = "end"
                    continue
                if c != ord('"'):
                    raise StreamError("invalid_json")
                span = self._value(final)
                if span is None:
                    break
                token = bytes(buf[span[0] : span[1]])
                name = token[1:-1]
                if b"\\" in name or name in self._names:
                    raise StreamError("ambiguous_name")  # escaped or duplicate member name
                # value_end only found the quotes: the name is written out as it came, so
                # it must be a valid JSON string (UTF-8, no control characters) first.
                if fm.mask(self._prog, None, None, token, 1, Number, -1, -1, False) is None:
                    raise StreamError("invalid_json")
                # ':' and the start of the value must be here too
                after = span[1]
                while after < len(buf) and buf[after] in _WS:
                    after += 1
                if after >= len(buf):
                    break
                if buf[after] != ord(":"):
                    raise StreamError("invalid_json")
                after += 1
                while after < len(buf) and buf[after] in _WS:
                    after += 1
                if after >= len(buf):
                    break
                if name == self._key and buf[after] == ord("["):
                    self._names.add(name)
                    self._pos = after + 1
                    prefix = (b"," if self._members_out else b"") + b'"' + name + b'":['
                    if self._arr_outcome >= 0:
                        self.counts[self._arr_outcome] += 1
                    if self._skeleton:
                        self._pending = prefix
                    else:
                        out.append(prefix)
                        self._members_out += 1
                    self._state = "elements"
                    continue
                end = fm.value_end(buf, after, final)
                if end == -2:
                    raise StreamError("invalid_json")
                if end == -1:
                    break
                self._names.add(name)
                masked = self._mask(
                    after,
                    end,
                    fm.step(self._prog, self._root, name),
                    fm.step(self._rec, self._rroot, name),
                    self._allow,
                    self._member_depth,
                )
                self._pos = end
                if masked is not None:
                    out.append((b"," if self._members_out else b"") + b'"' + name + b'":' + masked)
                    self._members_out += 1
                self._state = "after_member"
            elif state == "after_member":
                self._pos += 1
                if c == ord(","):
                    self._state = "member"
                elif c == ord("}"):
                    out.append(b"}")
                    self._state = "end"
                else:
                    raise StreamError("invalid_json")
            elif state in _WHERE:
                # Every complete element from here, in one native call (module docs).
                got = fm.mask_elements(
                    self._prog,
                    self._rec,
                    self._id_key,
                    buf,
                    self._pos,
                    final,
                    Number,
                    self._arr,
                    self._rarr,
                    self._el_allow,
                    self._el_depth,
                    self._index,
                    self._kept,
                    _WHERE[state],
                )
                masked, pos, index, kept, where, counts, n, ids, failed = got
                # What was masked before a failure still counts, as element by element.
                self._account(counts, n, ids)
                if failed:
                    raise StreamError("invalid_json")  # or declined: nothing of it goes out
                self._pos, self._index = pos, index
                if kept > self._kept:
                    if self._pending:
                        out.append(self._pending)
                        self._pending = b""
                        self._members_out += 1
                    self._kept = kept
                out.append(masked)
                if where == _CLOSED:
                    self._close_array(out)
                    continue
                self._state = _STATE[where]
                break  # more input is needed
        return b"".join(out)

    def _close_array(self, out: list[bytes]) -> None:
        if self._pending:
            # An allow-list skeleton: kept empty when it was empty, removed when emptied.
            if self._index == 0:
                out.append(self._pending + b"]")
                self._members_out += 1
            self._pending = b""
        else:
            out.append(b"]")
        self._state = "end" if self._key is None else "after_member"
