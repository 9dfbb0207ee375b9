"""Hypothesis strategies shared by the rules property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from gateway.jsoncodec import Number

KEYS = ["a", "b", "phone", "data", "x"]

scalars = st.one_of(
    st.text(alphabet="ab张1-@ ", max_size=6),
    st.integers(-(2**70), 2**70),
    st.sampled_from([Number("100.10"), Number("-0.5"), Number("1e3")]),
    st.booleans(),
    st.none(),
)


def documents(max_leaves: int = 25) -> st.SearchStrategy[Any]:
    """JSON trees over a few member names, so paths often match."""
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def _selector() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(KEYS).map(lambda k: f"'{k}'"),
        st.just("*"),
        st.integers(-3, 3).map(str),
    )


def _segment() -> st.SearchStrategy[str]:
    return st.tuples(st.booleans(), st.lists(_selector(), min_size=1, max_size=2)).map(
        lambda t: ("..[" if t[0] else "[") + ",".join(t[1]) + "]"
    )


simple_paths = st.lists(_segment(), max_size=3).map(lambda segs: "$" + "".join(segs))

general_paths = st.sampled_from(
    [
        "$..[?@.a]",
        "$..[?@ == 1]",
        "$.data[1:]",
        "$..[::-1]",
        "$..[?@.phone == 'a']",
        "$..x[?length(@) > 1]",
    ]
)

ACTIONS = [
    "drop",
    "redact",
    "keep",
    "hash",
    "{mask: cn_phone}",
    "{round: 1}",
    "{internal: {mask: {keep_first: 1}}, confidential: hash}",
]


@st.composite
def policies(
    draw: st.DrawFn,
    actions: list[str] = ACTIONS,
    general: bool = True,
    records: tuple[str, ...] = (),
) -> str:
    """A random policy file: simple paths, sometimes a general one (``general``), and
    sometimes one of ``records`` as its records path."""
    n = draw(st.integers(1, 4))
    seen: set[str] = set()
    any_path = st.one_of(simple_paths, general_paths) if general else simple_paths
    lines = [f"policy: p\nunlisted: {draw(st.sampled_from(['keep', 'drop']))}\nfields:\n"]
    for i in range(n):
        paths = draw(st.lists(any_path, min_size=1, max_size=2))
        paths = [p for p in dict.fromkeys(paths) if p not in seen]
        if not paths:
            continue
        seen.update(paths)
        level = draw(st.sampled_from(["public", "internal", "confidential", "secret", "never"]))
        action = draw(st.sampled_from(actions))
        if level != "never" and action.startswith("{internal"):
            level = "secret"
        quoted = ", ".join(f'"{p}"' for p in paths)
        lines.append(f"  - {{name: r{i}, paths: [{quoted}], level: {level}, action: {action}}}\n")
    if records:
        path = draw(st.sampled_from(["", *records]))
        if path:
            lines.append(f'records: {{path: "{path}", id: a}}\n')
    return "".join(lines)
