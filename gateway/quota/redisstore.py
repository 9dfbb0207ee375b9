"""Quota state in Redis: one Lua script per call, shared by every gateway host.

Theory of operation
===================

Per bucket (see ``engine``: one quota for one caller) four keys share the
caller's hash tag, so every key of one call's quotas with the same tag lives in
one Redis Cluster slot and one script decides them atomically::

    <prefix>{<tag>}:<kind>:<quota>[:<route>]:q   ZSET request token -> ts
    <prefix>{<tag>}:<kind>:<quota>[:<route>]:e   ZSET "<token>:<n>" -> ts (one per response)
    <prefix>{<tag>}:<kind>:<quota>[:<route>]:i   ZSET id digest -> last-seen ts
    <prefix>{<tag>}:<kind>:<quota>[:<route>]:n   STRING sum of n over :e

``<tag>`` is ``s:``/``i:`` + a keyed digest of the subject / client address;
names are percent-escaped (``engine.Keyer``); ids are 16-byte keyed digests,
never the ids. Scores are integer milliseconds.

One call, one round trip: :meth:`RedisBackend.precheck` and
:meth:`RedisBackend.account` each send one ``EVALSHA`` of ``lua.SCRIPT`` (and
``EVAL`` once after a NOSCRIPT: server restart, SCRIPT FLUSH). For each quota
the script drops the entries at or before ``now - window`` (only when the
oldest one has expired: one read in the usual case), reads usage (``:n`` keeps
the records sum O(1)), computes any block and its retry time exactly as
``memory.Window`` does, and only if nothing blocks writes the request / event /
ids and sets every written key to expire ``window`` (+1 s) after now, so idle
callers cost nothing. Which ids of a response are new is looked up (ZMSCORE,
Redis >= 6.2; ZSCORE per id before) only when it can matter: near
``max_distinct``, or for an undo; otherwise ZADD's own count says it. How many
round trips a *request* costs is decided by the request path
(``gateway.limiting``): one in the usual case.

Holds: the script also returns, per quota, how long a pre-check made right
after it would be refused (``engine``'s "Holds"), which the backend keeps in a
:class:`~gateway.quota.holds.Holds` for :meth:`RedisBackend.held`. When there
is one, the script also ``PUBLISH``es it on ``<prefix>holds`` (one message per
call: the backend's origin, then one line per held quota: key base, the quota's
fingerprint, the waits, the usage), and every backend ``SUBSCRIBE``s there on a
connection of its own, so a caller blocked through one process is refused
before the upstream by the others too, without a round trip. Its own
announcements are skipped (the reply gave the exact hold); others' end
:data:`REMOTE_MARGIN` early. Holds shorter than that margin are not announced
(short request-rate windows are then held by each process from its own calls).
Announcements are best effort: PUBLISH runs under ``pcall`` (an ACL or proxy
refusing it costs the announcement, never the decision), one missed while a
listener reconnects is simply not known, and a listener checks its link with a
PING every few seconds.

Time: ``now=None`` (the production path) uses the Redis server's ``TIME``
inside the script, so gateway hosts with skewed clocks share one timeline; the
script uses effects replication (Redis >= 5, ``redis.replicate_commands``;
the only mode from Redis 7), so that is replication-safe. An explicit ``now``
(tests, benchmarks) is used as given. Holds count from when the call was sent
(this process's monotonic clock), so they can end early here, never late.

Atomicity: one call is atomic across all its quotas that share a tag — the
usual case, since ``subject`` and ``subject_route`` quotas share the subject's
tag. A call that also has ``client_ip`` quotas (or an anonymous caller) spans
two tags, which Cluster cannot put in one script. Those groups run one after
the other in a fixed order (one round trip each); if a later group blocks, the
earlier groups' writes are undone (the request token and the event are removed
by their unique member; refreshed ids get their previous last-seen back unless
someone touched them since), and the remaining groups are only read, so the
decision and ``Retry-After`` still cover every quota. The undo is the script's
``u`` mode (one more round trip, on a refusal only): it takes the write back and
then reads the group as a dry call would, so the usage, resets and holds
reported for it are those of the state as it is after the undo — what the memory
backend, which never wrote, reports. Patching the first reply instead is not
enough: its resets and holds describe the written state, and without the
holds a caller already at a limit would no longer be held. Between the write
and the undo another call may see the extra usage: an over-count, never an
under-count. Only the last group announces, carrying the earlier groups' holds
when everything was kept, so an undone write is never announced; an undo
announces the holds of the state it leaves.

Connection: one pipelined connection per backend (``gateway.quota.resp``), no
pool: calls are written as they come (those of one event-loop turn in one
write) and replies matched in order. Failures: every call is bounded by
``timeout`` (connect included, no client retries), any Redis or network error
becomes :class:`StateUnavailable` and makes :attr:`RedisBackend.healthy` false
until a call succeeds; a timeout drops the connection (it may be half-open),
and the next call connects again, so recovery needs no restart. A call that
timed out may still have been applied by Redis: an over-count, never an
under-count.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from gateway.quota.backend import StateUnavailable
from gateway.quota.engine import (
    METRICS,
    Bucket,
    Decision,
    Keyer,
    KeyParts,
    Observation,
    decide,
    to_ms,
)
from gateway.quota.holds import Holds
from gateway.quota.lua import PER_QUOTA, SCRIPT, SCRIPT_SHA
from gateway.quota.resp import Connection, ReplyError, pack
from gateway.rules.model import Quota

log = logging.getLogger("gateway.quota.redis")

_SUFFIXES = ("q", "e", "i", "n")

# A hold announced by another process ends this much earlier here than it says:
# the message may have waited in a socket or behind a busy event loop.
REMOTE_MARGIN = 1.0
# So a hold shorter than that is not worth announcing.
_SHORTEST = int(REMOTE_MARGIN * 1000)
# Waits between attempts to (re)subscribe to the holds channel.
_LISTEN_BACKOFF = (0.1, 5.0)


def _line(base: str, fp: str, o: Observation) -> str:
    hold, used = o.hold_ms, o.used
    return (
        f"{base} {fp} {hold.get('records', 0)} {hold.get('requests', 0)} "
        f"{used.get('records', -1)} {used.get('distinct', -1)} {used.get('requests', -1)}"
    )


class RedisBackend:
    """Quota state in Redis (``state: {redis: URL}``), shared by all gateway hosts.

    ``broadcast=False`` neither announces holds nor listens for them (tools, tests).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.5,
        id_key: bytes = b"",
        prefix: str = "gw:quota:",
        broadcast: bool = True,
    ) -> None:
        self._timeout = timeout
        self._prefix = prefix
        self._keyer = Keyer(id_key)
        self._conn = Connection(url)
        self._holds = Holds()
        self._healthy = True
        # Holds are announced on a channel next to the keys; our own announcements are
        # recognised by origin and skipped (we learnt them from the reply, exactly).
        self._channel = prefix + "holds" if broadcast else ""
        self._origin = os.urandom(8).hex()
        self._calls = itertools.count()
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def healthy(self) -> bool:
        return self._healthy

    def keys(self, bucket: Bucket) -> list[str]:
        """The four keys of one bucket (public for tests and admin tools)."""
        base = f"{self._prefix}{{{bucket.tag}}}:{bucket.name}:"
        return [base + s for s in _SUFFIXES]

    async def _guarded(self, call: Awaitable[Any]) -> Any:
        """Await one exchange with Redis within the timeout; any failure is
        :class:`StateUnavailable` (and ``healthy`` says whether the last one worked)."""
        self._listen()
        try:
            async with asyncio.timeout(self._timeout):
                reply = await call
        except (ReplyError, OSError, TimeoutError) as e:
            self._healthy = False
            if isinstance(e, TimeoutError):
                self._conn.reset()  # the socket may be half-open; its calls are lost anyway
            raise StateUnavailable(f"quota state: {type(e).__name__}") from e
        self._healthy = True
        return reply

    async def _script(
        self, sha: str, text: str, keys: list[str], args: list[Any], digests: Sequence[bytes]
    ) -> Any:
        head = [len(keys), *keys, *args]
        try:
            return await self._conn.send(pack(["EVALSHA", sha, *head], digests))
        except ReplyError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            # Not cached (server restart, SCRIPT FLUSH): EVAL runs and caches it.
            return await self._conn.send(pack(["EVAL", text, *head], digests))

    async def _run(
        self,
        mode: str,
        quotas: Sequence[Quota],
        buckets: Sequence[Bucket],
        now: float | None,
        token: str,
        tail: list[Any],
        digests: Sequence[bytes],
        *,
        dry: bool,
        want_old: bool,
        publish: bool,
        pending: str = "",
    ) -> tuple[bool, int, list[Observation], list[list[int]]]:
        keys: list[str] = []
        args: list[Any] = [
            mode,
            "" if now is None else to_ms(now),
            token,
            "1" if dry else "0",
            "1" if want_old else "0",
            self._channel if publish else "",
            self._origin,
            pending,
            _SHORTEST,
            len(quotas),
        ]
        for q, b in zip(quotas, buckets, strict=True):
            keys += self.keys(b)
            tr, td, tq = q.tracks
            lim = q.limits
            args += [q.window_ms, int(tr), int(td), int(tq)]
            args += [lim.get("records", 0), lim.get("distinct", 0), lim.get("requests", 0)]
        args += tail
        reply = await self._guarded(self._script(SCRIPT_SHA, SCRIPT, keys, args, digests))
        allowed, ts = bool(reply[0]), int(reply[1])
        obs: list[Observation] = []
        for i in range(len(quotas)):
            v = reply[2 + PER_QUOTA * i : 2 + PER_QUOTA * (i + 1)]
            o = Observation()
            for j, m in enumerate(METRICS):
                if v[j] >= 0:
                    o.used[m] = v[j]
                    if v[3 + j]:
                        o.added[m] = v[3 + j]
                    if v[6 + j] >= 0:
                        o.reset_ms[m] = v[6 + j]
                if v[9 + j] > 0:
                    o.retry_ms[m] = v[9 + j]
            if v[12] > 0:
                o.hold_ms["records"] = v[12]
            if v[13] > 0:
                o.hold_ms["requests"] = v[13]
            obs.append(o)
        olds = reply[2 + PER_QUOTA * len(quotas) :] if want_old else []
        return allowed, ts, obs, olds

    async def _decide(
        self,
        mode: str,
        quotas: Sequence[Quota],
        buckets: Sequence[Bucket],
        now: float | None,
        records: int = 0,
        digests: Sequence[bytes] = (),
    ) -> Decision:
        if not quotas:
            return Decision(True, {})
        # Holds are relative to when the call was sent: the server's clock read
        # later, so a hold can only end early here, never late.
        sent = time.monotonic() if now is None else now
        # Unique log member for this call: this backend's random origin and a counter.
        token = f"{self._origin}{next(self._calls):x}"
        tail = [records] if mode == "a" else []
        groups: dict[str, list[int]] = {}
        for i, b in enumerate(buckets):
            groups.setdefault(b.tag, []).append(i)
        if len(groups) == 1:
            _, _, got, _ = await self._run(
                mode,
                quotas,
                buckets,
                now,
                token,
                tail,
                digests,
                dry=False,
                want_old=False,
                publish=True,
            )
            return self._learn(quotas, buckets, got, sent)
        # Several tags: run the groups in turn and undo on a later block. Only the
        # last group announces holds, those of the earlier groups with its own once
        # everything is committed (an undone write must not be announced).
        obs: list[Observation | None] = [None] * len(quotas)
        committed: list[tuple[list[int], int, list[list[int]]]] = []
        blocked = False
        tags = sorted(groups)
        for pos, tag in enumerate(tags):
            idx = groups[tag]
            qs, bs = [quotas[i] for i in idx], [buckets[i] for i in idx]
            last = pos == len(tags) - 1
            pending = ""
            if last and not blocked:
                pending = "\n".join(
                    _line(self.keys(buckets[i])[0][:-2], quotas[i].fingerprint, o)
                    for i, o in enumerate(obs)
                    if o is not None and max(o.hold_ms.values(), default=0) > _SHORTEST
                )
            allowed, ts, got, olds = await self._run(
                mode,
                qs,
                bs,
                now,
                token,
                tail,
                digests,
                dry=blocked,
                want_old=mode == "a",
                publish=last,
                pending=pending,
            )
            for i, o in zip(idx, got, strict=True):
                obs[i] = o
            if not allowed and not blocked:
                blocked = True
                for done, done_ts, done_olds in committed:
                    await self._undo(
                        quotas, buckets, obs, done, done_ts, done_olds, token, records, digests, now
                    )
            elif not blocked:
                committed.append((idx, ts, olds))
        return self._learn(quotas, buckets, [o for o in obs if o is not None], sent)

    def _learn(
        self,
        quotas: Sequence[Quota],
        buckets: Sequence[Bucket],
        obs: Sequence[Observation],
        sent: float,
    ) -> Decision:
        decision = decide(quotas, buckets, obs)
        self._holds.learn(quotas, buckets, decision, sent)
        return decision

    async def _undo(
        self,
        quotas: Sequence[Quota],
        buckets: Sequence[Bucket],
        obs: list[Observation | None],
        idx: list[int],
        ts: int,
        olds: list[list[int]],
        token: str,
        records: int,
        digests: Sequence[bytes],
        now: float | None,
    ) -> None:
        """Take back one group's committed write (``idx``, written at ``ts``) and put in
        ``obs`` what the script then reports: usage, resets and holds of the state as it
        is after the undo, which is what a call that never wrote reports (memory's)."""
        tail: list[Any] = [ts, records]
        for pos, i in enumerate(idx):
            o = obs[i]
            assert o is not None
            tail += [int("requests" in o.added), int("records" in o.added)]
            prev = olds[pos] if olds and quotas[i].tracks[1] else []
            tail.append(len(prev))
            for d, old in zip(digests, prev, strict=False):
                tail += [d, old]
        qs, bs = [quotas[i] for i in idx], [buckets[i] for i in idx]
        _, _, got, _ = await self._run(
            "u", qs, bs, now, token, tail, (), dry=True, want_old=False, publish=True
        )
        for i, o in zip(idx, got, strict=True):
            obs[i] = o

    def buckets(self, quotas: Sequence[Quota], parts: KeyParts) -> tuple[Bucket, ...]:
        return self._keyer.buckets(quotas, parts)

    def held(
        self, quotas: Sequence[Quota], buckets: Sequence[Bucket], now: float | None = None
    ) -> Decision | None:
        self._listen()
        if not quotas or not self._holds:
            return None
        return self._holds.check(quotas, buckets, time.monotonic() if now is None else now)

    async def precheck(
        self, quotas: Sequence[Quota], buckets: Sequence[Bucket], now: float | None = None
    ) -> Decision:
        return await self._decide("p", quotas, buckets, now)

    async def account(
        self,
        quotas: Sequence[Quota],
        buckets: Sequence[Bucket],
        records: int,
        ids: Sequence[str],
        now: float | None = None,
    ) -> Decision:
        digests = self._keyer.ids(ids)
        return await self._decide("a", quotas, buckets, now, records, digests)

    async def ping(self) -> None:
        # The health watch pings from start-up: listening for holds starts with it.
        await self._guarded(self._conn.execute("PING"))

    # -- holds announced by other processes ------------------------------------

    def _listen(self) -> None:
        """Start listening to the holds channel (once, from the first call on the loop)."""
        if self._listener is None and self._channel and not self._closed:
            self._listener = asyncio.get_running_loop().create_task(self._listen_forever())

    async def _listen_forever(self) -> None:
        wait, most = _LISTEN_BACKOFF
        warned = False
        while not self._closed:
            try:
                await self._conn.subscribe(
                    self._channel, self._announced, connect_within=self._timeout
                )
                wait, warned = _LISTEN_BACKOFF[0], False
            except (ReplyError, OSError, TimeoutError) as e:
                # Holds announced while not subscribed are missed: this process then
                # learns them from its own calls, as it would without the channel.
                (log.debug if warned else log.warning)("holds channel %s: %s", self._channel, e)
                warned = True
            await asyncio.sleep(wait)
            wait = min(most, wait * 2)

    def _announced(self, payload: bytes) -> None:
        origin, _, body = payload.decode("ascii", "replace").partition("\n")
        if origin == self._origin:
            return
        now = time.monotonic() - REMOTE_MARGIN
        start = len(self._prefix) + 1
        for line in body.split("\n"):
            try:
                base, fp, hr, hq, ur, ud, uq = line.rsplit(" ", 6)
                tag, name = base[start:].split("}:", 1)
                holds = {"records": int(hr), "requests": int(hq)}
                used = {m: int(v) for m, v in zip(METRICS, (ur, ud, uq), strict=True)}
            except ValueError:
                log.warning("holds channel: unreadable announcement")
                continue
            if not base.startswith(self._prefix + "{") or max(holds.values()) <= _SHORTEST:
                continue
            used = {m: v for m, v in used.items() if v >= 0}
            self._holds.put(tag, name, fp, holds, used, now, extend=True)

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self._conn.close()
