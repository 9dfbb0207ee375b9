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

The script (:data:`SCRIPT`) runs in one round trip: for each quota it drops
entries at or before ``now - window`` (ZRANGEBYSCORE + ZREMRANGEBYSCORE,
keeping ``:n`` in step so the records sum is O(1) instead of a scan), reads
usage, computes any block and its retry time exactly as ``memory.Window``
does, and only if nothing blocks writes the request / event / ids (ZADD) and
sets every written key to expire ``window`` (+1 s) after now, so idle callers
cost nothing. redis-py's ``register_script`` sends EVALSHA and reloads the
script on NOSCRIPT (server restart, SCRIPT FLUSH).

Time: ``now=None`` (the production path) uses the Redis server's ``TIME``
inside the script, so gateway hosts with skewed clocks share one timeline; the
script uses effects replication (Redis >= 5, ``redis.replicate_commands``;
the only mode from Redis 7), so that is replication-safe. An explicit ``now``
(tests, benchmarks) is used as given.

Atomicity: one call is atomic across all its quotas that share a tag — the
usual case, since ``subject`` and ``subject_route`` quotas share the subject's
tag. A call that also has ``client_ip`` quotas (or an anonymous caller) spans
two tags, which Cluster cannot put in one script. Those groups run one after
the other in a fixed order; if a later group blocks, the earlier groups' writes
are undone (the request token and the event are removed by their unique
member; refreshed ids get their previous last-seen back unless someone touched
them since), and the remaining groups are only read, so the decision and
``Retry-After`` still cover every quota. Between the write and the undo another
call may see the extra usage: an over-count, never an under-count.

Failures: every call is bounded by ``timeout`` (connect, socket and an overall
deadline, no client retries) and any Redis or network error becomes
:class:`StateUnavailable`; the pool reconnects on the next call once Redis is
back.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

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
    tracked,
)
from gateway.rules.model import Quota

# ARGV: mode ('p' precheck | 'a' account), now ('' = server TIME), token,
#   dry ('1' = decide only, never write), want_old ('1' = return ids' previous
#   last-seen for an undo), nq, then per quota: window_ms, track_records,
#   track_distinct, track_requests, max_records, max_distinct, max_requests
#   (0 = none); then for 'a': records, id digests...
# KEYS: 4 per quota (q, e, i, n).
# Returns: allowed, now, then 12 integers per quota: used r/d/q (-1 untracked),
#   added r/d/q, reset_ms r/d/q (-1 none), retry_ms r/d/q (0 = not blocking);
#   then, if want_old, one array per quota of previous scores (-1 = absent).
SCRIPT = r"""
local mode, token = ARGV[1], ARGV[3]
local dry, want_old = ARGV[4] == '1', ARGV[5] == '1'
local now
if ARGV[2] == '' then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[2])
end
local nq = tonumber(ARGV[6])
local p = 7 + nq * 7
local n, ids, inr = 0, {}, {}
if mode == 'a' then
  n = tonumber(ARGV[p])
  for j = p + 1, #ARGV do ids[#ids + 1] = ARGV[j]; inr[ARGV[j]] = true end
end

local function count(member) return tonumber(string.match(member, ':(%d+)$')) end
local function oldest(key)
  local e = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #e == 0 then return nil end
  return tonumber(e[2])
end

local st, allowed = {}, true
for q = 1, nq do
  local o = 6 + (q - 1) * 7
  local s = {
    w = tonumber(ARGV[o + 1]), tr = ARGV[o + 2] == '1', td = ARGV[o + 3] == '1',
    tq = ARGV[o + 4] == '1', mr = tonumber(ARGV[o + 5]), md = tonumber(ARGV[o + 6]),
    mq = tonumber(ARGV[o + 7]),
    kq = KEYS[(q - 1) * 4 + 1], ke = KEYS[(q - 1) * 4 + 2],
    ki = KEYS[(q - 1) * 4 + 3], kn = KEYS[(q - 1) * 4 + 4],
    ur = -1, ud = -1, uq = -1, ar = 0, ad = 0, aq = 0, rr = 0, rd = 0, rq = 0,
    new = 0, old = {},
  }
  st[q] = s
  local cutoff = now - s.w
  if s.tr then
    local gone = redis.call('ZRANGEBYSCORE', s.ke, '-inf', cutoff)
    if #gone > 0 then
      local sum = 0
      for _, m in ipairs(gone) do sum = sum + count(m) end
      redis.call('ZREMRANGEBYSCORE', s.ke, '-inf', cutoff)
      redis.call('DECRBY', s.kn, sum)
    end
    if redis.call('ZCARD', s.ke) == 0 then
      redis.call('DEL', s.kn)
      s.ur = 0
    else
      local v = redis.call('GET', s.kn)
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
    redis.call('ZREMRANGEBYSCORE', s.ki, '-inf', cutoff)
    s.ud = redis.call('ZCARD', s.ki)
  end
  if s.tq then
    redis.call('ZREMRANGEBYSCORE', s.kq, '-inf', cutoff)
    s.uq = redis.call('ZCARD', s.kq)
  end

  -- when `need` records have left the window
  local function records_free_at(need)
    local es = redis.call('ZRANGE', s.ke, 0, need - 1, 'WITHSCORES')
    local freed = 0
    for i = 1, #es, 2 do
      freed = freed + count(es[i])
      if freed >= need then return tonumber(es[i + 1]) + s.w end
    end
    return now + s.w
  end
  -- when the k-th oldest id not in this response leaves the window
  local function ids_free_at(k, skip)
    local es = redis.call('ZRANGE', s.ki, 0, k + skip - 1, 'WITHSCORES')
    for i = 1, #es, 2 do
      if not inr[es[i]] then
        k = k - 1
        if k == 0 then return tonumber(es[i + 1]) + s.w end
      end
    end
    return now + s.w
  end

  if mode == 'p' then
    if s.mq > 0 and s.uq + 1 > s.mq then
      local e = redis.call('ZRANGE', s.kq, s.uq - s.mq, s.uq - s.mq, 'WITHSCORES')
      s.rq = tonumber(e[2]) + s.w - now
    end
    if s.mr > 0 and s.ur >= s.mr then s.rr = records_free_at(s.ur - s.mr + 1) - now end
    -- max_distinct is not pre-checked: a caller at the limit may still re-read the
    -- customers it already has; a response with a new one is refused on account.
  else
    if s.mr > 0 and s.ur + n > s.mr then
      if n > s.mr then s.rr = s.w else s.rr = records_free_at(s.ur + n - s.mr) - now end
    end
    if s.td then
      for j, id in ipairs(ids) do
        local sc = redis.call('ZSCORE', s.ki, id)
        if sc then s.old[j] = tonumber(sc) else s.old[j] = -1; s.new = s.new + 1 end
      end
      if s.md > 0 and s.ud + s.new > s.md then
        if #ids > s.md then
          s.rd = s.w
        else
          local present = #ids - s.new
          s.rd = ids_free_at((s.ud - present) - (s.md - #ids), present) - now
        end
      end
    end
  end
  if s.rr > 0 or s.rd > 0 or s.rq > 0 then allowed = false end
end

if allowed and not dry then
  for q = 1, nq do
    local s = st[q]
    local ttl = s.w + 1000
    if mode == 'p' then
      if s.tq then
        redis.call('ZADD', s.kq, now, token)
        redis.call('PEXPIRE', s.kq, ttl)
        s.uq = s.uq + 1; s.aq = 1
      end
    else
      if s.tr and n > 0 then
        redis.call('ZADD', s.ke, now, token .. ':' .. n)
        redis.call('INCRBY', s.kn, n)
        redis.call('PEXPIRE', s.ke, ttl)
        redis.call('PEXPIRE', s.kn, ttl)
        s.ur = s.ur + n; s.ar = n
      end
      if s.td and #ids > 0 then
        -- chunked: Lua's unpack has a small stack limit
        for c = 1, #ids, 500 do
          local args = {}
          for j = c, math.min(c + 499, #ids) do
            args[#args + 1] = now; args[#args + 1] = ids[j]
          end
          redis.call('ZADD', s.ki, unpack(args))
        end
        redis.call('PEXPIRE', s.ki, ttl)
        s.ud = s.ud + s.new; s.ad = s.new
      end
    end
  end
end

local out = {allowed and 1 or 0, now}
for q = 1, nq do
  local s = st[q]
  local function reset(on, key)
    if not on then return -1 end
    local ts = oldest(key)
    if ts == nil then return -1 end
    return ts + s.w - now
  end
  for _, v in ipairs({s.ur, s.ud, s.uq, s.ar, s.ad, s.aq,
      reset(s.tr, s.ke), reset(s.td, s.ki), reset(s.tq, s.kq), s.rr, s.rd, s.rq}) do
    out[#out + 1] = v
  end
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


class RedisBackend:
    """Quota state in Redis (``state: {redis: URL}``), shared by all gateway hosts."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.5,
        id_key: bytes = b"",
        prefix: str = "gw:quota:",
        max_connections: int = 64,
    ) -> None:
        self._timeout = timeout
        self._prefix = prefix
        self._keyer = Keyer(id_key)
        # Client retries would multiply the wait on an outage; the route's
        # on_failure is the policy for that, so fail after one attempt.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        self._script = self._redis.register_script(SCRIPT)
        self._undo = self._redis.register_script(UNDO)

    def keys(self, bucket: Bucket) -> list[str]:
        """The four keys of one bucket (public for tests and admin tools)."""
        base = f"{self._prefix}{{{bucket.tag}}}:{bucket.name}:"
        return [base + s for s in _SUFFIXES]

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                return await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as e:
            raise StateUnavailable(f"quota state: {type(e).__name__}") from e

    async def _run(
        self,
        mode: str,
        quotas: Sequence[Quota],
        buckets: Sequence[Bucket],
        now: float | None,
        token: str,
        tail: list[Any],
        *,
        dry: bool,
        want_old: bool,
    ) -> tuple[bool, int, list[Observation], list[list[int]]]:
        keys: list[str] = []
        args: list[Any] = [
            mode,
            "" if now is None else to_ms(now),
            token,
            "1" if dry else "0",
            "1" if want_old else "0",
            len(quotas),
        ]
        for q, b in zip(quotas, buckets, strict=True):
            keys += self.keys(b)
            tr, td, tq = tracked(q)
            lim = q.limits
            args += [q.window * 1000, int(tr), int(td), int(tq)]
            args += [lim.get("records", 0), lim.get("distinct", 0), lim.get("requests", 0)]
        reply = await self._call(self._script, keys, args + tail)
        allowed, ts = bool(reply[0]), int(reply[1])
        obs: list[Observation] = []
        for i in range(len(quotas)):
            v = [int(x) for x in reply[2 + 12 * i : 14 + 12 * i]]
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
            obs.append(o)
        olds = [[int(x) for x in r] for r in reply[2 + 12 * len(quotas) :]] if want_old else []
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
        buckets = [self._keyer.bucket(q, parts) for q in quotas]
        token = os.urandom(8).hex()
        tail: list[Any] = [records, *digests] if mode == "a" else []
        groups: dict[str, list[int]] = {}
        for i, b in enumerate(buckets):
            groups.setdefault(b.tag, []).append(i)
        obs: list[Observation | None] = [None] * len(quotas)
        if len(groups) == 1:
            _, _, got, _ = await self._run(
                mode, quotas, buckets, now, token, tail, dry=False, want_old=False
            )
            return decide(quotas, buckets, got)
        # Several tags: run the groups in turn and undo on a later block.
        committed: list[tuple[list[int], int, list[list[int]]]] = []
        blocked = False
        for tag in sorted(groups):
            idx = groups[tag]
            qs, bs = [quotas[i] for i in idx], [buckets[i] for i in idx]
            allowed, ts, got, olds = await self._run(
                mode, qs, bs, now, token, tail, dry=blocked, want_old=mode == "a"
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
        return decide(quotas, buckets, [o for o in obs if o is not None])

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
            # Report usage as it is after the undo.
            for m, n in added.items():
                o.used[m] -= n
            o.added.clear()
        await self._call(self._undo, keys, args)

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
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.ping()
        except (RedisError, OSError, TimeoutError) as e:
            raise StateUnavailable(f"quota state: {type(e).__name__}") from e

    async def close(self) -> None:
        await self._redis.aclose()
