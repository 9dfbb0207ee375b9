"""The native masking pass: a plan applied to the response bytes in one C pass.

Theory of operation. :mod:`gateway._fastmask` (``gateway/_fastmask.c``) parses
the body as strict JSON and writes the masked document directly, never
building the Python document. It is an *accelerator* for the reference
pipeline ``jsoncodec.encode(plan.apply(jsoncodec.decode(body)).document)``:
whenever it answers, its bytes, field counts, record count and record ids are
exactly the reference's (``tests/rules/test_native.py`` checks this on the
shipped rule pack, on random documents and on random damage to them); when it
cannot answer exactly it *declines* and the caller runs the reference. So the
fail-closed rules live in one place, the reference, and a body the native pass
does not understand costs only the time it spent looking.

What it declines, at compile time (:func:`compile_plan` returns None): plans
with general paths (filters, slices: they need the evaluator), negative
indices (they need the array length), a root selected by a rule; records paths
other than a chain of single name/wildcard/index selectors. At run time:
anything the reference would reject or name (invalid JSON, BOM, empty, a top-
level scalar, nesting beyond the limit, lone surrogates, overflowing
numbers), member names with escapes, duplicate member names (the reference's
last-wins rule), and transform results it cannot write faithfully.

Transforms done natively: drop, redact, keep, hash, and the masks ``ends``
(keep_first/keep_last), ``sig`` (bank_card), ``cn_id``, ``phone``, ``email``.
Others (``cn_name``, ``address``, ``round``) are called back in Python with the
value as the reference decoder builds it (str, int, Number, bool, None).

``GATEWAY_NATIVE=0`` in the environment switches the pass off (the reference
runs alone), for comparison and for the tests of the reference itself.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

from gateway.jsoncodec import Number
from gateway.jsonpath import JSONPath
from gateway.jsonpath._ast import IndexSel, NameSel, WildcardSel
from gateway.rules.actions import native_spec
from gateway.rules.automaton import Automaton, PState
from gateway.rules.model import Outcome
from gateway.rules.presets import COMPOUND_SURNAMES

try:
    from gateway import _fastmask  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - built by `pip install -e .`; the reference still runs
    _fastmask = None

ENABLED = _fastmask is not None and os.environ.get("GATEWAY_NATIVE", "1") != "0"
if _fastmask is not None:
    _fastmask.set_surnames(sorted(COMPOUND_SURNAMES))

# Operation codes of gateway/_fastmask.c.
OP_REVEAL, OP_DROP, OP_REDACT, OP_MASK_ENDS, OP_MASK_SIG = 0, 1, 2, 3, 4
OP_MASK_CN_ID, OP_MASK_PHONE, OP_MASK_EMAIL, OP_HASH, OP_CALL = 5, 6, 7, 8, 9
OP_ROUND_INT, OP_CN_NAME, OP_ADDRESS = 10, 11, 12
_MASK_OPS = {
    "ends": OP_MASK_ENDS,
    "sig": OP_MASK_SIG,
    "cn_id": OP_MASK_CN_ID,
    "phone": OP_MASK_PHONE,
    "email": OP_MASK_EMAIL,
    "cn_name": OP_CN_NAME,
    "address": OP_ADDRESS,
}
_NO_PAD = b""


def _pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC's inner and outer key pads (RFC 2104), as ``hmac_sha256_hex`` builds them."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def action_tuple(outcome: Outcome) -> tuple[Any, ...]:
    """The C action for one rule's outcome."""
    if outcome.kind == "drop":
        return (OP_DROP, 0, 0, "*", _NO_PAD, _NO_PAD, 0, None)
    transform = outcome.transform
    if transform is None:  # reveal or keep
        return (OP_REVEAL, 0, 0, "*", _NO_PAD, _NO_PAD, 0, None)
    spec = native_spec(transform)
    if spec is not None:
        if spec[0] == "redact":
            return (OP_REDACT, 0, 0, "*", _NO_PAD, _NO_PAD, 0, None)
        if spec[0] == "hash":
            inner, outer = _pads(spec[1])
            return (OP_HASH, 0, 0, "*", inner, outer, spec[2], None)
        if spec[0] == "mask":
            _, variant, first, last, char = spec
            return (_MASK_OPS[variant], first, last, char, _NO_PAD, _NO_PAD, 0, None)
        if spec[0] == "round_step":
            # what the native step cannot do (strings, negative decimals) is called back
            return (OP_ROUND_INT, spec[1], 0, "*", _NO_PAD, _NO_PAD, 0, transform)
    return (OP_CALL, 0, 0, "*", _NO_PAD, _NO_PAD, 0, transform)


def compile_plan(
    root: PState | None,
    outcomes: Sequence[Outcome],
    general: Sequence[tuple[int, JSONPath]],
    allowlist: bool,
) -> Any:
    """A native program for a plan, or None when the plan needs the reference."""
    if not ENABLED or root is None or general or root.outcome is not None:
        return None
    index: dict[int, int] = {}
    order: list[PState] = []

    def number(st: PState) -> int:
        sid = index.get(id(st))
        if sid is None:
            sid = index[id(st)] = len(order)
            order.append(st)
        return sid

    number(root)
    states: list[tuple[int, int, int, dict[bytes, int], dict[int, int]]] = []
    i = 0
    while i < len(order):
        st = order[i]
        i += 1
        if st.negative:
            return None
        keys = {k.encode("utf-8", "surrogatepass"): number(t) for k, t in st.keys.items()}
        idx = {j: number(t) for j, t in st.idx.items()}
        other = -1 if st.other is None else number(st.other)
        outcome = -1 if st.outcome is None else st.outcome.slot
        states.append((outcome, int(st.live), other, keys, idx))
    actions = [action_tuple(o) for o in outcomes]
    for slot, o in enumerate(outcomes):
        if o.slot != slot:  # pragma: no cover - outcomes are built in rule order
            return None
    return _fastmask.compile(states, 0, actions, len(outcomes), allowlist)


def compile_records(path: JSONPath) -> Any:
    """A native program selecting the records, or None when the path is not a plain chain.

    Only single name, wildcard and non-negative index selectors without
    descendant segments: those select each node at most once and in document
    order, as the reference's nodelist does.
    """
    if not ENABLED:
        return None
    for seg in path.query.segments:
        if seg.descendant or len(seg.selectors) != 1:
            return None
        sel = seg.selectors[0]
        if isinstance(sel, IndexSel):
            if sel.index < 0:
                return None
        elif not isinstance(sel, NameSel | WildcardSel):
            return None
    auto = Automaton([(0, path)])
    if auto.start is None:
        return None
    dstates = sorted(auto.states.values(), key=lambda d: d.id)
    states = [
        (
            0 if d.accepts else -1,
            int(d.live),
            -1 if d.other is None else d.other.id,
            {k.encode("utf-8", "surrogatepass"): t.id for k, t in d.keys.items()},
            {j: t.id for j, t in d.idx.items()},
        )
        for d in dstates
    ]
    return _fastmask.compile(states, auto.start.id, [], 0, False)


def mask(
    program: Any, records: Any, id_key: bytes | None, body: bytes, max_depth: int
) -> tuple[bytes, list[int], int, list[str]] | None:
    """(masked body, counts per outcome slot + unlisted, records, ids) or None (declined)."""
    result: tuple[bytes, list[int], int, list[str]] | None = _fastmask.mask(
        program, records, id_key, body, max_depth, Number
    )
    return result
