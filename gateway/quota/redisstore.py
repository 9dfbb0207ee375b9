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
:meth:`RedisBackend.account` each send one ``EVALSHA`` of :data:`SCRIPT` (and
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
decision and ``Retry-After`` still cover every quota. Between the write and the
undo another call may see the extra usage: an over-count, never an
under-count. Only the last group announces, carrying the earlier groups' holds
when everything was kept, so an undone write is never announced.

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
import hashlib
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
    fingerprint,
    to_ms,
    tracked,
)
from gateway.quota.holds import Holds
from gateway.quota.resp import Connection, ReplyError, pack
from gateway.rules.model import Quota

log = logging.getLogger("gateway.quota.redis")

# ARGV: mode ('p' precheck | 'a' account), now ('' = server TIME), token,
#   dry ('1' = decide only, never write), want_old ('1' = return ids' previous
#   last-seen for an undo), channel ('' = publish nothing), origin, pending
#   (lines of earlier groups, published only if this call commits), shortest
#   (ms: shorter holds are not announced), nq, then per quota: window_ms,
#   track_records, track_distinct, track_requests, max_records, max_distinct,
#   max_requests (0 = none); then for 'a': records, id digests...
# KEYS: 4 per quota (q, e, i, n).
# Returns: allowed, now, then 14 integers per quota: used r/d/q (-1 untracked),
#   added r/d/q, reset_ms r/d/q (-1 none), retry_ms r/d/q (0 = not blocking),
#   hold_ms r/q (0 = a pre-check right now would pass on that metric);
#   then, if want_old, one array per quota of previous scores (-1 = absent).
# Publishes on channel, when some quota holds: origin, then one line per such
#   quota "<key base> <fingerprint> <hold r> <hold q> <used r> <used d> <used q>".
SCRIPT = r"""
local mode, token = ARGV[1], ARGV[3]
local dry, want_old = ARGV[4] == '1', ARGV[5] == '1'
local channel, origin, pending = ARGV[6], ARGV[7], ARGV[8]
local shortest = tonumber(ARGV[9])
local now
if ARGV[2] == '' then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[2])
end
local nq = tonumber(ARGV[10])
local p = 11 + nq * 7
local n, ids, inr = 0, {}, {}
if mode == 'a' then
  n = tonumber(ARGV[p])
  for j = p + 1, #ARGV do ids[#ids + 1] = ARGV[j]; inr[ARGV[j]] = true end
end

local function count(member) return tonumber(string.match(member, ':(%d+)$')) end
-- the oldest entry of a log: member, score (nil when empty)
local function first(key)
  local e = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #e == 0 then return nil, nil end
  return e[1], tonumber(e[2])
end
-- the oldest entry once everything at or before cutoff is dropped (one read when
-- nothing has expired, the common case)
local function prune(key, cutoff)
  local m, ts = first(key)
  if ts ~= nil and ts <= cutoff then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
    m, ts = first(key)
  end
  return m, ts
end
-- scores of ids in a set (false = absent); ZMSCORE from Redis 6.2, else one by one
local function scores(key)
  local out, ok = {}, true
  for c = 1, #ids, 500 do
    local got = redis.pcall('ZMSCORE', key, unpack(ids, c, math.min(c + 499, #ids)))
    if type(got) ~= 'table' or got.err then ok = false; break end
    for _, v in ipairs(got) do out[#out + 1] = v end
  end
  if not ok then
    out = {}
    for j, id in ipairs(ids) do out[j] = redis.call('ZSCORE', key, id) end
  end
  return out
end
-- when `need` records have left the window
local function records_free_at(s, need)
  local es = redis.call('ZRANGE', s.ke, 0, need - 1, 'WITHSCORES')
  local freed = 0
  for i = 1, #es, 2 do
    freed = freed + count(es[i])
    if freed >= need then return tonumber(es[i + 1]) + s.w end
  end
  return now + s.w
end
-- when the k-th oldest id not in this response leaves the window
local function ids_free_at(s, k, skip)
  local es = redis.call('ZRANGE', s.ki, 0, k + skip - 1, 'WITHSCORES')
  for i = 1, #es, 2 do
    if not inr[es[i]] then
      k = k - 1
      if k == 0 then return tonumber(es[i + 1]) + s.w end
    end
  end
  return now + s.w
end
-- what blocks a pre-check on the current state: waits (ms) on records, requests.
-- max_distinct is not pre-checked: a caller at the limit may still re-read the
-- customers it already has; a response with a new one is refused on account.
local function prewaits(s)
  local wr, wq = 0, 0
  if s.mr > 0 and s.ur >= s.mr then wr = records_free_at(s, s.ur - s.mr + 1) - now end
  if s.mq > 0 and s.uq + 1 > s.mq then
    local e = redis.call('ZRANGE', s.kq, s.uq - s.mq, s.uq - s.mq, 'WITHSCORES')
    wq = tonumber(e[2]) + s.w - now
  end
  return wr, wq
end

local st, allowed = {}, true
for q = 1, nq do
  local o = 10 + (q - 1) * 7
  local s = {
    w = tonumber(ARGV[o + 1]), tr = ARGV[o + 2] == '1', td = ARGV[o + 3] == '1',
    tq = ARGV[o + 4] == '1', mr = tonumber(ARGV[o + 5]), md = tonumber(ARGV[o + 6]),
    mq = tonumber(ARGV[o + 7]),
    kq = KEYS[(q - 1) * 4 + 1], ke = KEYS[(q - 1) * 4 + 2],
    ki = KEYS[(q - 1) * 4 + 3], kn = KEYS[(q - 1) * 4 + 4],
    ur = -1, ud = -1, uq = -1, ar = 0, ad = 0, aq = 0, rr = 0, rd = 0, rq = 0,
    hr = 0, hq = 0, new = 0, old = {},
  }
  st[q] = s
  local cutoff = now - s.w
  if s.tr then
    -- the records log and its running sum :n (O(1) usage instead of a scan)
    local _, ts = first(s.ke)
    local v = redis.call('GET', s.kn)
    if ts ~= nil and ts <= cutoff then
      local gone = redis.call('ZRANGEBYSCORE', s.ke, '-inf', cutoff)
      local sum = 0
      for _, m in ipairs(gone) do sum = sum + count(m) end
      redis.call('ZREMRANGEBYSCORE', s.ke, '-inf', cutoff)
      if v then v = redis.call('DECRBY', s.kn, sum) end
      _, ts = first(s.ke)
    end
    s.e0 = ts
    if ts == nil then
      s.ur = 0
    else
      if not v then
        -- the sum was lost (eviction): rebuild it from the log
        local sum = 0
        for _, m in ipairs(redis.call('ZRANGE', s.ke, 0, -1)) do sum = sum + count(m) end
        redis.call('SET', s.kn, sum, 'PX', s.w + 1000)
        v = sum
      end
      s.ur = tonumber(v)
    end
  end
  if s.td then
    s.i0m, s.i0 = prune(s.ki, cutoff)
    s.ud = s.i0 and redis.call('ZCARD', s.ki) or 0
  end
  if s.tq then
    local _, ts = prune(s.kq, cutoff)
    s.q0 = ts
    s.uq = ts and redis.call('ZCARD', s.kq) or 0
  end

  if mode == 'p' then
    s.rr, s.rq = prewaits(s)
  else
    if s.mr > 0 and s.ur + n > s.mr then
      if n > s.mr then s.rr = s.w else s.rr = records_free_at(s, s.ur + n - s.mr) - now end
    end
    -- Which ids are new matters only near max_distinct (or for an undo); otherwise
    -- the write's own count says it.
    if s.td and #ids > 0 and (want_old or (s.md > 0 and s.ud + #ids > s.md)) then
      s.known = true
      for j, sc in ipairs(scores(s.ki)) do
        if sc then s.old[j] = tonumber(sc) else s.old[j] = -1; s.new = s.new + 1 end
      end
      if s.md > 0 and s.ud + s.new > s.md then
        if #ids > s.md then
          s.rd = s.w
        else
          local present = #ids - s.new
          s.rd = ids_free_at(s, (s.ud - present) - (s.md - #ids), present) - now
        end
      end
    end
  end
  if s.rr > 0 or s.rd > 0 or s.rq > 0 then allowed = false end
end

local wrote = allowed and not dry
if wrote then
  for q = 1, nq do
    local s = st[q]
    local ttl = s.w + 1000
    if mode == 'p' then
      if s.tq then
        redis.call('ZADD', s.kq, now, token)
        redis.call('PEXPIRE', s.kq, ttl)
        s.uq = s.uq + 1; s.aq = 1
        s.q0 = s.q0 or now
      end
    else
      if s.tr and n > 0 then
        redis.call('ZADD', s.ke, now, token .. ':' .. n)
        redis.call('PEXPIRE', s.ke, ttl)
        s.ur = s.ur + n; s.ar = n
        redis.call('SET', s.kn, s.ur, 'PX', ttl)
        s.e0 = s.e0 or now
      end
      if s.td and #ids > 0 then
        local added = 0
        -- chunked: Lua's unpack has a small stack limit
        for c = 1, #ids, 500 do
          local args = {}
          for j = c, math.min(c + 499, #ids) do
            args[#args + 1] = now; args[#args + 1] = ids[j]
          end
          added = added + redis.call('ZADD', s.ki, unpack(args))
        end
        redis.call('PEXPIRE', s.ki, ttl)
        s.new = added
        s.ud = s.ud + added; s.ad = added
        if s.i0 == nil or s.ud == #ids then
          s.i0 = now  -- every id in the window was just seen
        elseif inr[s.i0m] then
          s.i0 = select(2, first(s.ki))  -- the oldest id was seen again
        end
      end
    end
  end
end

-- Holds: what a pre-check would say right now, after this call.
local lines = {}
for q = 1, nq do
  local s = st[q]
  if mode == 'p' and not wrote then s.hr, s.hq = s.rr, s.rq else s.hr, s.hq = prewaits(s) end
  if s.hr > shortest or s.hq > shortest then
    local o = 10 + (q - 1) * 7
    local fp = ARGV[o + 1] .. ':' .. ARGV[o + 5] .. ':' .. ARGV[o + 6] .. ':' .. ARGV[o + 7]
    lines[#lines + 1] = table.concat(
      {string.sub(s.kq, 1, -3), fp, s.hr, s.hq, s.ur, s.ud, s.uq}, ' ')
  end
end
if channel ~= '' then
  if wrote and pending ~= '' then lines[#lines + 1] = pending end
  if #lines > 0 then
    -- pcall: an endpoint that refuses PUBLISH (ACL channels, a proxy) costs the
    -- announcement, never the decision
    redis.pcall('PUBLISH', channel, origin .. '\n' .. table.concat(lines, '\n'))
  end
end

local out = {allowed and 1 or 0, now}
for q = 1, nq do
  local s = st[q]
  local function reset(on, ts)
    if not on or ts == nil then return -1 end
    return ts + s.w - now
  end
  local v = {s.ur, s.ud, s.uq, s.ar, s.ad, s.aq,
    reset(s.tr, s.e0), reset(s.td, s.i0), reset(s.tq, s.q0), s.rr, s.rd, s.rq, s.hr, s.hq}
  for i = 1, 14 do out[#out + 1] = v[i] end
end
if want_old then
  for q = 1, nq do out[#out + 1] = st[q].old end
end
return out
"""

# Undo a committed call in one tag group (see "Atomicity" above).
# ARGV: token, ts, records, nq, then per quota: requests ('1'), records ('1'),
#   m, then m pairs (id digest, previous score or -1). KEYS as for SCRIPT.
UNDO = r"""
local token, ts, n = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local p = 5
for q = 1, tonumber(ARGV[4]) do
  local kq, ke, ki, kn = KEYS[(q-1)*4+1], KEYS[(q-1)*4+2], KEYS[(q-1)*4+3], KEYS[(q-1)*4+4]
  if ARGV[p] == '1' then redis.call('ZREM', kq, token) end
  if ARGV[p + 1] == '1' and redis.call('ZREM', ke, token .. ':' .. n) == 1 then
    redis.call('DECRBY', kn, n)
  end
  local m = tonumber(ARGV[p + 2])
  p = p + 3
  for j = 1, m do
    local id, old = ARGV[p], ARGV[p + 1]
    p = p + 2
    local sc = redis.call('ZSCORE', ki, id)
    if sc and tonumber(sc) == ts then
      if old == '-1' then redis.call('ZREM', ki, id) else redis.call('ZADD', ki, old, id) end
    end
  end
end
return 1
"""

_SUFFIXES = ("q", "e", "i", "n")
_SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
_UNDO_SHA = hashlib.sha1(UNDO.encode()).hexdigest()
_PER_QUOTA = 14

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

    async def _call(
        self,
        sha: str,
        text: str,
        keys: list[str],
        args: list[Any],
        digests: Sequence[bytes] = (),
    ) -> Any:
        return await self._guarded(self._script(sha, text, keys, args, digests))

    async def _run(
        self,
        mode: str,
        quotas: Sequence[Quota],
        buckets: Sequence[Bucket],
        now: float | None,
        token: str,
        records: int | None,
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
            tr, td, tq = tracked(q)
            lim = q.limits
            args += [q.window * 1000, int(tr), int(td), int(tq)]
            args += [lim.get("records", 0), lim.get("distinct", 0), lim.get("requests", 0)]
        if records is not None:
            args.append(records)
        reply = await self._call(_SCRIPT_SHA, SCRIPT, keys, args, digests)
        allowed, ts = bool(reply[0]), int(reply[1])
        obs: list[Observation] = []
        for i in range(len(quotas)):
            v = reply[2 + _PER_QUOTA * i : 2 + _PER_QUOTA * (i + 1)]
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
        olds = reply[2 + _PER_QUOTA * len(quotas) :] if want_old else []
        return allowed, ts, obs, olds

    async def _decide(
        self,
        mode: str,
        quotas: Sequence[Quota],
        parts: KeyParts,
        now: float | None,
        records: int = 0,
        digests: Sequence[bytes] = (),
    ) -> Decision:
        if not quotas:
            return Decision(True, {})
        # Holds are relative to when the call was sent: the server's clock read
        # later, so a hold can only end early here, never late.
        sent = time.monotonic() if now is None else now
        buckets = [self._keyer.bucket(q, parts) for q in quotas]
        # Unique log member for this call: this backend's random origin and a counter.
        token = f"{self._origin}{next(self._calls):x}"
        counted = records if mode == "a" else None
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
                counted,
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
                    _line(self.keys(buckets[i])[0][:-2], fingerprint(quotas[i]), o)
                    for i, o in enumerate(obs)
                    if o is not None and max(o.hold_ms.values(), default=0) > _SHORTEST
                )
            allowed, ts, got, olds = await self._run(
                mode,
                qs,
                bs,
                now,
                token,
                counted,
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
                    await self._rollback(
                        quotas, buckets, obs, done, done_ts, done_olds, token, records, digests
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

    async def _rollback(
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
    ) -> None:
        keys: list[str] = []
        args: list[Any] = [token, ts, records, len(idx)]
        for pos, i in enumerate(idx):
            keys += self.keys(buckets[i])
            o = obs[i]
            assert o is not None
            added = dict(o.added)
            args += [int("requests" in added), int("records" in added)]
            prev = olds[pos] if olds and tracked(quotas[i])[1] else []
            args.append(len(prev))
            for d, old in zip(digests, prev, strict=False):
                args += [d, old]
            # Report usage as it is after the undo; the holds were computed with the
            # undone write and are dropped (a hold must never outlast the block).
            for m, n in added.items():
                o.used[m] -= n
            o.added.clear()
            o.hold_ms.clear()
        await self._call(_UNDO_SHA, UNDO, keys, args)

    def held(
        self, quotas: Sequence[Quota], parts: KeyParts, now: float | None = None
    ) -> Decision | None:
        self._listen()
        if not quotas or not self._holds:
            return None
        buckets = [self._keyer.bucket(q, parts) for q in quotas]
        return self._holds.check(quotas, buckets, time.monotonic() if now is None else now)

    async def precheck(
        self, quotas: Sequence[Quota], parts: KeyParts, now: float | None = None
    ) -> Decision:
        return await self._decide("p", quotas, parts, now)

    async def account(
        self,
        quotas: Sequence[Quota],
        parts: KeyParts,
        records: int,
        ids: Sequence[str],
        now: float | None = None,
    ) -> Decision:
        return await self._decide("a", quotas, parts, now, records, self._keyer.ids(ids))

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
