"""The single document walk that applies a plan (see :mod:`gateway.rules.plan`).

Rules of the walk:

* a node's outcome is the strongest of its automaton state's outcome and any
  general-path hit on it (``Hits``: parent identity -> member -> outcome);
* ``drop`` removes the member or element (array elements are removed after the
  array has been walked, so positions are the upstream ones); a transform
  replaces the value; ``reveal``/``keep`` leave it and walk on inside, since
  other rules may select nested values;
* a subtree is entered only when its automaton state is live or it contains a
  general-path hit; otherwise it is not visited at all;
* allow-list policies (``unlisted: drop``) drop every value no rule selects,
  except containers some path can still reach (kept as the skeleton, and
  removed if nothing listed is left in them); a value a rule selects passes
  with its whole subtree (nested rules still apply);
* only JSON types are expected; any other container-like object reached by
  the walk raises ``TypeError`` (the caller fails closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.jsoncodec import Number
from gateway.jsonpath import Location
from gateway.rules.automaton import PState
from gateway.rules.model import UNLISTED, Outcome, stronger

Hits = dict[int, dict[str | int, Outcome]]
_SCALARS = frozenset({str, int, bool, type(None), Number, float})
_NO_KEYS: dict[str, PState] = {}
_NO_IDX: dict[int, PState] = {}


@dataclass(frozen=True, slots=True)
class Touch:
    """One value a rule touched: where (RFC 9535 location) and what happened."""

    location: Location
    outcome: Outcome


class _Dropped:
    __slots__ = ()


class Walker:
    DROPPED: Any = _Dropped()

    __slots__ = ("counts", "hits", "live", "touched")

    def __init__(self, hits: Hits, live: set[int], counts: list[int]) -> None:
        self.counts = counts  # by Outcome.slot
        self.hits = hits
        self.live = live
        self.touched: list[Touch] = []

    def _count(self, out: Outcome, path: Location | None) -> None:
        self.counts[out.slot] += 1
        if path is not None:
            self.touched.append(Touch(path, out))

    def node(
        self, v: Any, st: PState | None, out: Outcome | None, allow: bool, path: Location | None
    ) -> Any:
        """The value to put in place of ``v``, or :attr:`DROPPED`."""
        if out is not None:
            self._count(out, path)
            transform = out.transform
            if transform is not None:
                return transform(v)
            if out.kind == "drop":
                return self.DROPPED
            allow = False
        if type(v) in _SCALARS:
            if allow:
                self._count(UNLISTED, path)
                return self.DROPPED
            return v
        if st is not None and not st.live:
            st = None
        if st is None and id(v) not in self.live:
            if allow:
                self._count(UNLISTED, path)
                return self.DROPPED
            if not isinstance(v, dict | list):
                raise TypeError(f"not a JSON value: {type(v).__name__}")
            return v
        before = len(v) if allow and isinstance(v, dict | list) else 0
        if isinstance(v, dict):
            self._dict(v, st, allow, path)
        elif isinstance(v, list):
            self._list(v, st, allow, path)
        else:
            raise TypeError(f"not a JSON value: {type(v).__name__}")
        if before and not v:
            return self.DROPPED  # an allow-list skeleton that carried nothing listed
        return v

    def _dict(
        self, d: dict[str, Any], st: PState | None, allow: bool, path: Location | None
    ) -> None:
        hits = self.hits
        live = self.live
        hit = hits.get(id(d)) if hits else None
        keys, other = (st.keys, st.other) if st is not None else (_NO_KEYS, None)
        drops: list[str] = []
        t: PState | None
        if other is None and not allow and not live and path is None:
            # Only members some selector names can match: look them up directly.
            for k, named in keys.items():
                if k in d:
                    v = d[k]
                    o = named.outcome
                    if o is None and (not named.live or type(v) in _SCALARS):
                        continue
                    new = self.node(v, named, o, False, None)
                    if new is not v:
                        if new is self.DROPPED:
                            drops.append(k)
                        else:
                            d[k] = new
        else:
            for k, v in d.items():
                t = keys.get(k, other)
                o = t.outcome if t is not None else None
                if hit is not None:
                    h = hit.get(k)
                    if h is not None:
                        o = stronger(o, h)
                if o is None and not allow:
                    if type(v) in _SCALARS:
                        continue
                    if (t is None or not t.live) and id(v) not in live:
                        continue
                new = self.node(v, t, o, allow, None if path is None else (*path, k))
                if new is not v:
                    if new is self.DROPPED:
                        drops.append(k)
                    else:
                        d[k] = new
        for k in drops:
            del d[k]

    def _list(self, a: list[Any], st: PState | None, allow: bool, path: Location | None) -> None:
        hits = self.hits
        live = self.live
        hit = hits.get(id(a)) if hits else None
        if st is not None:
            idx, other, negative = st.idx, st.other, st.negative
        else:
            idx, other, negative = _NO_IDX, None, False
        n = len(a)
        drops: set[int] = set()
        for j in range(n):
            v = a[j]
            t: PState | None
            if negative and st is not None:
                t = st.element(j, n)
            else:
                t = idx.get(j, other) if idx else other
            o = t.outcome if t is not None else None
            if hit is not None:
                h = hit.get(j)
                if h is not None:
                    o = stronger(o, h)
            if o is None and not allow:
                if type(v) in _SCALARS:
                    continue
                if (t is None or not t.live) and id(v) not in live:
                    continue
            new = self.node(v, t, o, allow, None if path is None else (*path, j))
            if new is not v:
                if new is self.DROPPED:
                    drops.add(j)
                else:
                    a[j] = new
        if drops:
            a[:] = [x for j, x in enumerate(a) if j not in drops]
