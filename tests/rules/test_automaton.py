"""The key/position automaton selects exactly the nodes RFC 9535 evaluation selects."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.jsonpath import Location, compile_path
from gateway.rules.automaton import MAX_STATES, Automaton, DState, TooComplex

from .strategies import documents, simple_paths


def accepted(auto: Automaton, doc: Any) -> dict[Location, tuple[int, ...]]:
    """Locations where the DFA accepts, and the rules accepting there."""
    out: dict[Location, tuple[int, ...]] = {}

    def walk(v: Any, state: DState | None, loc: Location) -> None:
        if state is None:
            return
        if state.accepts:
            out[loc] = state.accepts
        if isinstance(v, dict):
            for k, c in v.items():
                walk(c, state.keys.get(k, state.other), (*loc, k))
        elif isinstance(v, list):
            for j, c in enumerate(v):
                t = state.element(j, len(v)) if state.negative else state.idx.get(j, state.other)
                walk(c, t, (*loc, j))

    walk(doc, auto.start, ())
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(simple_paths, min_size=1, max_size=4, unique=True), documents())
def test_automaton_matches_the_evaluator(paths: list[str], doc: Any) -> None:
    compiled = [compile_path(p) for p in paths]
    auto = Automaton(list(enumerate(compiled)))
    expected: dict[Location, set[int]] = {}
    for i, p in enumerate(compiled):
        for loc, _ in p.find(doc):
            expected.setdefault(loc, set()).add(i)
    got = {loc: set(rules) for loc, rules in accepted(auto, doc).items()}
    assert got == expected


def test_examples() -> None:
    auto = Automaton([(0, compile_path("$..phone")), (1, compile_path("$..accounts[*].number"))])
    doc = {"phone": "1", "c": {"phone": "2", "accounts": [{"number": "3", "phone": "4"}]}}
    assert accepted(auto, doc) == {
        ("phone",): (0,),
        ("c", "phone"): (0,),
        ("c", "accounts", 0, "number"): (1,),
        ("c", "accounts", 0, "phone"): (0,),
    }


def test_negative_indices_depend_on_length() -> None:
    auto = Automaton([(0, compile_path("$[-1]")), (1, compile_path("$[0]"))])
    assert accepted(auto, [5]) == {(0,): (0, 1)}
    assert accepted(auto, [5, 6, 7]) == {(0,): (1,), (2,): (0,)}


def test_state_explosion_is_refused() -> None:
    paths = [(i, compile_path(f"$..a{i}..[{i}]..b{i}")) for i in range(10)]
    with pytest.raises(TooComplex, match=str(MAX_STATES)):
        Automaton(paths)
