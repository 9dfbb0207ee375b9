"""Key/position automaton: many simple JSONPaths matched in one document walk.

Theory of operation. A *simple* path uses only name, wildcard and index
selectors (``$..phone``, ``$.data[*].accounts[0].number``). Path ``p`` with
segments ``s0..s(m-1)`` is a little program; the NFA state ``(p, i)`` means
"this node matched the first ``i`` segments". Moving from a node to a child
(member name ``k``, or element ``j`` of ``n``):

* ``(p, i) -> (p, i+1)`` when a selector of ``s_i`` matches the child;
* ``(p, i) -> (p, i)`` as well when ``s_i`` is a descendant segment (``..``),
  because the child's own children may still match it (RFC 9535 2.5.2);
* ``(p, m)`` is accepting: path ``p`` selects this node.

Subset construction at load turns the sets into :class:`DState` objects with
a transition table per member name that some selector mentions, one shared
``other`` transition for every other name or index, and a table per index.
Negative indices depend on the array length, so those transitions are built
on first use and memoised. An empty set is ``None``: nothing below can match,
and the walker skips the subtree. The DFA depends only on the policy; each
plan copies it into :class:`PState` objects carrying the caller's outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.jsonpath import JSONPath
from gateway.jsonpath._ast import IndexSel, NameSel, WildcardSel
from gateway.rules.model import Outcome, stronger

MAX_STATES = 4096
NfaSet = frozenset[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class _Step:
    descendant: bool
    names: frozenset[str]
    wildcard: bool
    indices: frozenset[int]


def _steps(path: JSONPath) -> tuple[_Step, ...]:
    out = []
    for seg in path.query.segments:
        names = frozenset(s.name for s in seg.selectors if isinstance(s, NameSel))
        indices = frozenset(s.index for s in seg.selectors if isinstance(s, IndexSel))
        wildcard = any(isinstance(s, WildcardSel) for s in seg.selectors)
        out.append(_Step(seg.descendant, names, wildcard, indices))
    return tuple(out)


class TooComplex(Exception):
    pass


class DState:
    """A DFA state: transitions by member name / index, and the rules accepting here."""

    __slots__ = (
        "_auto",
        "_memo",
        "accepts",
        "id",
        "idx",
        "keys",
        "live",
        "negative",
        "nfa",
        "other",
    )

    def __init__(self, auto: Automaton, sid: int, nfa: NfaSet) -> None:
        self._auto = auto
        self.id = sid
        self.nfa = nfa
        self.accepts: tuple[int, ...] = ()
        self.live = False
        self.keys: dict[str, DState] = {}
        self.other: DState | None = None
        self.idx: dict[int, DState] = {}
        self.negative = False
        self._memo: dict[tuple[int, int], DState | None] = {}

    def element(self, j: int, n: int) -> DState | None:
        """Transition for element ``j`` of an array of length ``n`` (negative indices)."""
        key = (j, j - n)
        if key not in self._memo:
            self._memo[key] = self._auto.follow(
                self, lambda st: j in st.indices or j - n in st.indices
            )
        return self._memo[key]


class Automaton:
    """The DFA of a policy's simple paths: ``start`` is the root's state."""

    def __init__(self, paths: Sequence[tuple[int, JSONPath]]) -> None:
        self.rules = tuple(rule for rule, _ in paths)
        self.programs = tuple(_steps(p) for _, p in paths)
        self.states: dict[NfaSet, DState] = {}
        self._queue: list[DState] = []
        self.start = self._get(frozenset((p, 0) for p in range(len(self.programs))))
        while self._queue:
            self._expand(self._queue.pop())

    def _get(self, nfa: NfaSet) -> DState | None:
        if not nfa:
            return None
        state = self.states.get(nfa)
        if state is None:
            if len(self.states) >= MAX_STATES:
                raise TooComplex(f"the paths need more than {MAX_STATES} automaton states")
            state = DState(self, len(self.states), nfa)
            self.states[nfa] = state
            self._queue.append(state)
        return state

    def follow(self, state: DState, matches: Callable[[_Step], bool]) -> DState | None:
        """A transition first needed at run time (negative indices), expanded at once."""
        found = self._follow(state, matches)
        while self._queue:
            self._expand(self._queue.pop())
        return found

    def _follow(self, state: DState, matches: Callable[[_Step], bool]) -> DState | None:
        out = set()
        for p, i in state.nfa:
            prog = self.programs[p]
            if i < len(prog):
                st = prog[i]
                if st.wildcard or matches(st):
                    out.add((p, i + 1))
                if st.descendant:
                    out.add((p, i))
        return self._get(frozenset(out))

    def _expand(self, state: DState) -> None:
        active = [(p, i) for p, i in state.nfa if i < len(self.programs[p])]
        state.live = bool(active)
        state.accepts = tuple(
            sorted({self.rules[p] for p, i in state.nfa if i == len(self.programs[p])})
        )
        names: set[str] = set()
        indices: set[int] = set()
        for p, i in active:
            names |= self.programs[p][i].names
            indices |= self.programs[p][i].indices
        state.other = self._follow(state, lambda st: False)
        for name in sorted(names):
            target = self._follow(state, lambda st, k=name: k in st.names)  # type: ignore[misc]
            if target is not None:
                state.keys[name] = target
        for i in sorted(indices):
            if i < 0:
                state.negative = True
                continue
            target = self._follow(state, lambda st, k=i: k in st.indices)  # type: ignore[misc]
            if target is not None:
                state.idx[i] = target


class PState:
    """A DFA state as seen by one plan: the winning outcome for nodes reaching it."""

    __slots__ = (
        "_build",
        "dstate",
        "idx",
        "keys",
        "live",
        "negative",
        "other",
        "outcome",
        "shapes",
        "shapes_allow",
    )

    def __init__(self, dstate: DState, outcome: Outcome | None, build: _PlanStates) -> None:
        self.dstate = dstate
        self.outcome = outcome
        self.live = dstate.live
        self.negative = dstate.negative
        self._build = build
        self.keys: dict[str, PState] = {}
        self.other: PState | None = None
        self.idx: dict[int, PState] = {}
        # Compiled per-object operations by key tuple (gateway.rules.shapes).
        self.shapes: dict[Any, Any] = {}
        self.shapes_allow: dict[Any, Any] = {}

    def element(self, j: int, n: int) -> PState | None:
        target = self.dstate.element(j, n)
        return None if target is None else self._build.get(target)


class _PlanStates:
    def __init__(self, auto: Automaton, outcomes: Sequence[Outcome]) -> None:
        self.auto = auto
        self.outcomes = outcomes
        self.states: dict[int, PState] = {}

    def get(self, d: DState) -> PState:
        state = self.states.get(d.id)
        if state is None:
            self._sync()
            state = self.states[d.id]
        return state

    def _sync(self) -> None:
        """Create plan states for every DFA state not yet copied, then link them."""
        new = []
        for d in list(self.auto.states.values()):
            if d.id not in self.states:
                winner: Outcome | None = None
                for rule in d.accepts:
                    winner = stronger(winner, self.outcomes[rule])
                self.states[d.id] = PState(d, winner, self)
                new.append(d)
        for d in new:
            state = self.states[d.id]
            state.keys = {k: self.states[t.id] for k, t in d.keys.items()}
            state.other = None if d.other is None else self.states[d.other.id]
            state.idx = {i: self.states[t.id] for i, t in d.idx.items()}


def plan_states(auto: Automaton, outcomes: Sequence[Outcome]) -> PState | None:
    """Copy the policy DFA for one plan; ``outcomes[r]`` is rule ``r``'s outcome."""
    return None if auto.start is None else _PlanStates(auto, outcomes).get(auto.start)
