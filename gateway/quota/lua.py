"""The Lua script of the Redis quota backend, and its calling convention.

:data:`SCRIPT` decides one call (a pre-check or an account) for every quota of
one hash-tag group atomically, and writes only when nothing blocks; in its undo
mode it takes back a committed call when a later group of the same call blocks,
and reports the state that leaves. :mod:`gateway.quota.redisstore` builds its
arguments and reads its replies; the comment above the script is the contract
between the two. What it does, and why, is that module's "Theory of operation".
"""

from __future__ import annotations

import hashlib
from typing import Final

# ARGV: mode ('p' precheck | 'a' account | 'u' undo), now ('' = server TIME), token,
#   dry ('1' = decide only, never write), want_old ('1' = return ids' previous
#   last-seen for an undo), channel ('' = publish nothing), origin, pending
#   (lines of earlier groups, published only if this call commits), shortest
#   (ms: shorter holds are not announced), nq, then per quota: window_ms,
#   track_records, track_distinct, track_requests, max_records, max_distinct,
#   max_requests (0 = none); then for 'a': records, id digests...; for 'u' (take
#   back what an 'a'/'p' call with this token committed at ts, then report the
#   state it leaves, as a dry call would): ts, records, then per quota: requests
#   ('1' = remove the request), event ('1' = remove the event), m, then m pairs
#   (id digest, previous last-seen or -1).
# KEYS: 4 per quota (q, e, i, n).
# Returns: allowed, now, then 14 integers per quota: used r/d/q (-1 untracked),
#   added r/d/q, reset_ms r/d/q (-1 none), retry_ms r/d/q (0 = not blocking),
#   hold_ms r/q (0 = a pre-check right now would pass on that metric);
#   then, if want_old, one array per quota of previous scores (-1 = absent).
# Publishes on channel, when some quota holds: origin, then one line per such
#   quota "<key base> <fingerprint> <hold r> <hold q> <used r> <used d> <used q>".
SCRIPT: Final = r"""
local mode, token = ARGV[1], ARGV[3]
-- an undo writes nothing after taking its call back: it only reports
local dry, want_old = ARGV[4] == '1' or mode == 'u', ARGV[5] == '1'
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
elseif mode == 'u' then
  -- Undone here, before the state is read, so the reply (usage, resets, holds) is
  -- the state as it is once the call is taken back: what the memory backend, which
  -- never wrote, reports for the same call.
  local ts, rn = tonumber(ARGV[p]), ARGV[p + 1]
  local u = p + 2
  for q = 1, nq do
    local kq, ke = KEYS[(q - 1) * 4 + 1], KEYS[(q - 1) * 4 + 2]
    local ki, kn = KEYS[(q - 1) * 4 + 3], KEYS[(q - 1) * 4 + 4]
    if ARGV[u] == '1' then redis.call('ZREM', kq, token) end
    -- the sum only if it is there: DECRBY would make a lost one negative (and
    -- without expiry); reading rebuilds a lost sum from the log
    if ARGV[u + 1] == '1' and redis.call('ZREM', ke, token .. ':' .. rn) == 1
        and redis.call('EXISTS', kn) == 1 then
      redis.call('DECRBY', kn, rn)
    end
    local m = tonumber(ARGV[u + 2])
    u = u + 3
    for _ = 1, m do
      local id, old = ARGV[u], ARGV[u + 1]
      u = u + 2
      -- put back only ids nobody has seen again since (their score is still ours)
      local sc = redis.call('ZSCORE', ki, id)
      if sc and tonumber(sc) == ts then
        if old == '-1' then redis.call('ZREM', ki, id) else redis.call('ZADD', ki, old, id) end
      end
    end
  end
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
  elseif mode == 'a' then
    if s.mr > 0 and s.ur + n > s.mr then
      if n > s.mr then s.rr = s.w else s.rr = records_free_at(s, s.ur + n - s.mr) - now end
    end
    -- Which ids are new matters only near max_distinct (or for an undo); otherwise
    -- the write's own count says it. A response without ids is refused too when the
    -- usage is already over the max (a reload lowered it): the ids in the window
    -- with the response's are still too many, as the memory backend says.
    if s.td and ((want_old and #ids > 0) or (s.md > 0 and s.ud + #ids > s.md)) then
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

SCRIPT_SHA: Final = hashlib.sha1(SCRIPT.encode()).hexdigest()
# Integers per quota in SCRIPT's reply.
PER_QUOTA: Final = 14
