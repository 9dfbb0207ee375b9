"""Plans: one compiled view of a policy for one kind of caller, applied per response.

Theory of operation. ``RuleSet.plan`` resolves every rule of the policy for
the caller's level and need-to-know outcomes (:meth:`FieldRule.resolve`) and
copies the policy automaton into states carrying the winning outcome
(:func:`plan_states`). :meth:`Plan.apply` then

1. counts the records (``records.path``) on the document as upstream sent it;
2. evaluates the few *general* paths (filters, slices) exactly with the
   JSONPath evaluator, turning their nodes into a table keyed by the identity
   of the parent container (documents from the JSON decoder are trees);
3. walks the document once (:mod:`gateway.rules.walk`), following automaton
   transitions by member name and index, applying outcomes in place, and
   skipping every subtree where no path can match.

The document is **mutated in place** and returned in :class:`MaskResult`
(a new object only when the root itself is replaced). Values no rule selects
are never touched: same objects, same key order, same ``Number`` text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.jsoncodec import DEFAULT_MAX_DEPTH
from gateway.jsonpath import JSONPath, Location
from gateway.rules.automaton import PState
from gateway.rules.model import NO_RECORDS, UNLISTED, Outcome, Records, RecordSpec, stronger
from gateway.rules.native import compile_plan
from gateway.rules.native import mask as native_mask
from gateway.rules.shapes import FastWalker
from gateway.rules.walk import Hits, Touch, Walker

COUNTERS = ("masked", "dropped", "redacted", "hashed", "revealed")


@dataclass(slots=True)
class MaskResult:
    """The masked document, field counts per value ``{counter: {rule: n}}``, records."""

    document: Any
    fields: dict[str, dict[str, int]]
    records: Records
    touched: list[Touch] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Plan:
    policy: str
    level: int
    level_name: str
    outcomes: tuple[Outcome, ...]  # per rule, in file order
    root: PState | None
    general: tuple[tuple[int, JSONPath], ...]
    allowlist: bool
    records: RecordSpec | None
    # The plan compiled for the native pass (gateway.rules.native); None: reference only.
    native: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        program = compile_plan(self.root, self.outcomes, self.general, self.allowlist)
        object.__setattr__(self, "native", program)

    def mask_bytes(
        self,
        body: bytes,
        *,
        records: RecordSpec | None = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> tuple[bytes, MaskResult] | None:
        """The masked body straight from the upstream bytes, or None: run the reference.

        When it answers, the bytes and the result's counts and records are
        exactly those of ``encode(apply(decode(body)))`` (``MaskResult.document``
        is None: no document was built). It never raises on any body.
        """
        if self.native is None:
            return None
        spec = records or self.records
        rec_program: Any = None
        id_key: bytes | None = None
        if spec is not None:
            if spec.native is None:
                return None
            rec_program, id_key = spec.native, spec.id_bytes
        got = native_mask(self.native, rec_program, id_key, body, max_depth)
        if got is None:
            return None
        out, counts, n, ids = got
        found = Records(n, tuple(dict.fromkeys(ids))) if spec is not None else NO_RECORDS
        return out, MaskResult(None, self._fields(counts), found)

    def apply(self, document: Any, *, records: RecordSpec | None = None) -> MaskResult:
        """Mask ``document`` in place. ``records`` overrides the policy's record spec."""
        return self._run(document, records, trace=False)

    def trace(self, document: Any) -> MaskResult:
        """Like :meth:`apply`, and list every touched value (for ``gateway explain``)."""
        return self._run(document, None, trace=True)

    def _run(self, document: Any, records: RecordSpec | None, trace: bool) -> MaskResult:
        spec = records or self.records
        found = spec.extract(document) if spec is not None else NO_RECORDS
        counts = [0] * (len(self.outcomes) + 1)  # by Outcome.slot; the last is UNLISTED
        hits, live, root_hit = self._general_hits(document) if self.general else ({}, set(), None)
        root = self.root
        out = root.outcome if root is not None else None
        if root_hit is not None:
            out = stronger(out, root_hit)
        touched: list[Touch] = []
        if (
            root is not None
            and out is None
            and not hits
            and not trace
            and root.live
            and (type(document) is dict or type(document) is list)
        ):
            FastWalker(counts).run(document, root, self.allowlist)
            new: Any = document
        else:
            walker = Walker(hits, live, counts)
            new = walker.node(document, root, out, self.allowlist, () if trace else None)
            touched = walker.touched
            if new is walker.DROPPED:
                # Dropped by a rule (-> null), or an emptied allow-list skeleton (kept).
                new = document if out is None and isinstance(document, dict | list) else None
        return MaskResult(new, self._fields(counts), found, touched)

    def _fields(self, counts: list[int]) -> dict[str, dict[str, int]]:
        fields: dict[str, dict[str, int]] = {c: {} for c in COUNTERS}
        for outcome, n in zip((*self.outcomes, UNLISTED), counts, strict=True):
            if n:
                fields[outcome.counter][outcome.rule] = n
        return fields

    def _general_hits(self, doc: Any) -> tuple[Hits, set[int], Outcome | None]:
        hits: Hits = {}
        live: set[int] = set()
        root_hit: Outcome | None = None
        for rule, path in self.general:
            outcome = self.outcomes[rule]
            for loc, _ in path.find(doc):
                if not loc:
                    root_hit = stronger(root_hit, outcome)
                    continue
                parent = _parent(doc, loc, live)
                slot = hits.setdefault(id(parent), {})
                slot[loc[-1]] = stronger(slot.get(loc[-1]), outcome)
        return hits, live, root_hit


def _parent(doc: Any, loc: Location, live: set[int]) -> Any:
    node = doc
    live.add(id(node))
    for part in loc[:-1]:
        node = node[part]
        live.add(id(node))
    return node
