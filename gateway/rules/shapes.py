"""Fast path of the walk: operations compiled once per object *shape*.

Records in a response share their member names and, mostly, the types of
their values. For an automaton state, a tuple of member names and the tuple of
their value types, the work is always the same: which members to transform,
which to drop, which containers to walk into (and how), and which counters to
add. :class:`Shape` holds that list, cached on the plan state (at most
:data:`MAX_SHAPES` per state; beyond that a shape is compiled per object, same
result). An object then costs two tuples built in C, one cache lookup and the
actions themselves; counters are added once per shape per walk.

This path is taken when no general (filter/slice) path matched and nothing is
traced; :class:`gateway.rules.walk.Walker` is the reference it must equal, and
``tests/rules/test_shapes.py`` checks that they agree on random documents.
"""

from __future__ import annotations

from typing import Any

from gateway.jsoncodec import Number
from gateway.rules.actions import Transform
from gateway.rules.automaton import PState
from gateway.rules.model import UNLISTED

MAX_SHAPES = 256
_SCALARS = frozenset({str, int, bool, type(None), Number, float})
# Descend modes: walk a member as a plain container, or as an allow-list skeleton
# (removed when nothing listed is left in it).
PLAIN, SKELETON = 0, 1


def _container(t: type) -> bool:
    if t in _SCALARS:
        return False
    if issubclass(t, dict | list):
        return True
    raise TypeError(f"not a JSON value: {t.__name__}")


class Shape:
    __slots__ = ("counts", "descend", "drops", "transforms")

    def __init__(
        self, st: PState, keys: tuple[str, ...], types: tuple[type, ...], allow: bool
    ) -> None:
        self.transforms: list[tuple[str, Transform]] = []
        self.drops: list[str] = []
        self.descend: list[tuple[str, bool, PState, int]] = []  # key, is_dict, state, mode
        counts: dict[int, int] = {}
        named, other = st.keys, st.other
        for k, vt in zip(keys, types, strict=True):
            t = named.get(k, other)
            live = t is not None and t.live
            o = t.outcome if t is not None else None
            if o is None:
                if _container(vt) and live:
                    assert t is not None
                    self.descend.append((k, issubclass(vt, dict), t, SKELETON if allow else PLAIN))
                elif allow:
                    self.drops.append(k)
                    counts[UNLISTED.slot] = counts.get(UNLISTED.slot, 0) + 1
                continue
            counts[o.slot] = counts.get(o.slot, 0) + 1
            if o.transform is not None:
                self.transforms.append((k, o.transform))
            elif o.kind == "drop":
                self.drops.append(k)
            elif live and _container(vt):
                assert t is not None
                self.descend.append((k, issubclass(vt, dict), t, PLAIN))
        self.counts = tuple(counts.items())


class FastWalker:
    __slots__ = ("counts", "used")

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts
        self.used: dict[Shape, int] = {}

    def run(self, document: Any, st: PState, allow: bool) -> None:
        if isinstance(document, dict):
            self.obj(document, st, allow)
        else:
            self.arr(document, st, allow)
        counts = self.counts
        for shape, uses in self.used.items():
            for slot, n in shape.counts:
                counts[slot] += n * uses

    def obj(self, d: dict[str, Any], st: PState, allow: bool) -> bool:
        """Walk an object; False when it is a skeleton left empty (allow-list)."""
        keys = tuple(d)
        types = tuple(map(type, d.values()))
        cache = st.shapes_allow if allow else st.shapes
        shape = cache.get((keys, types))
        if shape is None:
            shape = Shape(st, keys, types, allow)
            if len(cache) < MAX_SHAPES:
                cache[(keys, types)] = shape
        for k, transform in shape.transforms:
            d[k] = transform(d[k])
        for k, is_dict, t, mode in shape.descend:
            v = d[k]
            kept = self.obj(v, t, mode == SKELETON) if is_dict else self.arr(v, t, mode == SKELETON)
            if not kept:
                del d[k]
        for k in shape.drops:
            del d[k]
        used = self.used
        used[shape] = used.get(shape, 0) + 1
        return not (allow and keys and not d)

    def arr(self, a: list[Any], st: PState, allow: bool) -> bool:
        """Walk an array; False when it is a skeleton left empty (allow-list)."""
        n = len(a)
        if st.idx or st.negative:
            return self._indexed(a, st, allow)
        t = st.other
        o = t.outcome if t is not None else None
        counts = self.counts
        if o is not None:
            counts[o.slot] += n
            if o.transform is not None:
                a[:] = [o.transform(v) for v in a]
            elif o.kind == "drop":
                a.clear()
            elif t is not None and t.live:
                for v in a:
                    self._plain(v, t)
        elif t is None or not t.live:
            if allow and n:
                counts[UNLISTED.slot] += n
                a.clear()
        elif not allow:
            for v in a:
                self._plain(v, t)
        else:
            keep = []
            for v in a:
                tv = type(v)
                if tv is dict or (tv not in _SCALARS and isinstance(v, dict)):
                    if not v or self.obj(v, t, True):
                        keep.append(v)
                elif tv is list or (tv not in _SCALARS and isinstance(v, list)):
                    if not v or self.arr(v, t, True):
                        keep.append(v)
                elif tv in _SCALARS:
                    counts[UNLISTED.slot] += 1
                else:
                    raise TypeError(f"not a JSON value: {tv.__name__}")
            if len(keep) != n:
                a[:] = keep
        return not (allow and n and not a)

    def _plain(self, v: Any, t: PState) -> None:
        tv = type(v)
        if tv is dict:
            self.obj(v, t, False)
        elif tv is list:
            self.arr(v, t, False)
        elif tv not in _SCALARS and _container(tv):
            if isinstance(v, dict):
                self.obj(v, t, False)
            else:
                self.arr(v, t, False)

    def _indexed(self, a: list[Any], st: PState, allow: bool) -> bool:
        """Arrays under index selectors: a state per element (rare; kept simple)."""
        n = len(a)
        drops: set[int] = set()
        counts = self.counts
        for j in range(n):
            t = st.element(j, n) if st.negative else st.idx.get(j, st.other)
            v = a[j]
            o = t.outcome if t is not None else None
            if o is None:
                if t is not None and t.live and _container(type(v)):
                    kept = self.obj(v, t, allow) if isinstance(v, dict) else self.arr(v, t, allow)
                    if not kept:
                        drops.add(j)
                elif allow:
                    counts[UNLISTED.slot] += 1
                    drops.add(j)
                continue
            counts[o.slot] += 1
            if o.transform is not None:
                a[j] = o.transform(v)
            elif o.kind == "drop":
                drops.add(j)
            elif t is not None and t.live:
                self._plain(v, t)
        if drops:
            a[:] = [x for j, x in enumerate(a) if j not in drops]
        return not (allow and n and not a)
