"""The Lua scripts of budget mode. Each runs atomically in Redis, so no two calls can both see room
for themselves (the check-then-increment race of client-side budgets).

Per principal two keys under one hash tag (one Redis Cluster slot):
  usage  hash  lo (oldest bucket in the window), T / C (tokens / cost in the window, reservations
               included), t<bucket> / c<bucket> (per bucket), id (the principal, for operators),
               r:<reservation> = "bucket:tokens:cost:deadline" for each call in flight
  marks  zset  x:<reservation> (reclaimed unsettled) and n:<reservation> (settled with nothing
               held) -> when the mark is dropped (24 h), so that a settlement sent twice (a reply
               lost to a timeout, a pipeline that failed half-way) counts once, and one that comes
               after its reservation was reclaimed still counts. Touched only off the common path,
               pruned whenever touched: the usage hash stays buckets and calls in flight.
Each window of a principal (its scope's own, and any other the quota file sets) is such a pair of its own.
Buckets: the rolling 24 h (`r`) 5 minutes, the window being the latest 5-minute boundary at least 24 h ago
up to now (289 buckets, as the Prometheus rules count); the sliding minute (`n`: tokens, and requests in the
cost column) 1 second, the window the 60 whole seconds before the current one and the current one (60 to 61 s:
never more than the limit in any 60 s, a call refused at most 1 s longer than an exact log would); the calls in
flight (`k<lease>`) one bucket forever, each call a reservation of 1 whose deadline is its lease, renewed by its
process while it runs, so a killed process frees its slots after the lease; a calendar window one bucket, the
local day (`d`), ISO week (`w`), month (`m`) or year (`y`) in the organization's time zone (Lua has no tzdata:
the client sends the zone's UTC offset at the call's time with the window kind, `d28800`; `m` alone is the UTC month,
what versions before zones sent for departments, so old and new processes share keys). Any offset works,
half hours and quarters included: the bucket is computed from the offset in seconds. Cost is held in
integer nano-units of the currency, exact below 2^53 (9 million currency units per window). Time is
Redis's own clock (`TIME`), one clock for every process, unless the caller passes one (tests).

Each principal's hash is read once (HMGET) and written once (HSET, plus one HDEL when a settlement
released something) per script call: a reservation carrying one settlement for the same two
principals is seven commands. The first call of a bucket reads the whole hash once (HGETALL): it
drops the buckets that left the window, recomputes the totals, moves reservations still in flight
from a bucket that left (a department's month ended mid-call) into the current one and reclaims
expired reservations.
"""

from __future__ import annotations

from otel_tokens.quota.budget.lua_refusal import REFUSAL

# the time of a script call: the caller's (tests), else Redis's own clock, one clock for every process
_NOW = r"""
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
"""

_PRELUDE = _NOW + r"""

local function month_index(t)  -- days-from-civil inverted (H. Hinnant), UTC
  local z = math.floor(t / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y * 12 + m - 1
end

-- buckets before the current one still in the window: rolling 24 h, the sliding minute, else one bucket (a calendar
-- window; `k`, the calls in flight, has one bucket forever)
local SPAN = {r = 288, n = 60, d = 0, w = 0, m = 0, y = 0, k = 0}
local SIZE = {r = 300, n = 1}             -- seconds per bucket of the sliding windows
-- key expiry after a bucket's first write: longer than the window (Antarctica/Troll's 2-hour DST change makes a
-- 26-hour day and a 170-hour week), and than a window that a zone change moving the clock back 26 h lengthens
-- (a key's bucket only moves forward): 24 h 10 min, 3 days, 9 days, 33 days, 368 days
local KEEP = {r = 87000, d = 259200, w = 777600, m = 2851200, y = 31795200, n = 600, k = 3600}
local GONE = 86400                        -- seconds a settlement may come late or again and count once
local state = {}                          -- key -> what this script call knows of it, and will write

local function int(x) return string.format('%d', x) end  -- Redis would write a Lua 100 as '1e2'

local function parse(v)  -- a reservation: bucket, tokens, cost, deadline
  local b, t, c, d = string.match(v, '^(-?%d+):(%d+):(%d+):([%d.]+)$')
  return tonumber(b), tonumber(t), tonumber(c), tonumber(d)
end

local function put(s, f, v) s.set[f] = v; s.del[f] = nil; s.dirty = true end
local function drop(s, f) s.set[f] = nil; s.del[f] = true; s.dirty = true end

local function add(U, s, b, tokens, cost)
  if tokens == 0 and cost == 0 then return end
  if b == s.b then
    s.t, s.c = s.t + tokens, s.c + cost
  else  -- an older bucket (a reservation made before the current one began)
    if tokens ~= 0 then redis.call('HINCRBY', U, 't' .. b, int(tokens)) end
    if cost ~= 0 then redis.call('HINCRBY', U, 'c' .. b, int(cost)) end
  end
  s.T, s.C, s.dirty = s.T + tokens, s.C + cost, true
end

-- gives back what a reservation holds, from its own bucket if that is still in the window
local function release(U, s, v)
  local b, t, c = parse(v)
  if b == nil or b < s.lo then return end
  add(U, s, b, -t, -c)
end

local function mark(G, m)  -- a mark of this call, and the expired ones gone
  redis.call('ZREMRANGEBYSCORE', G, '-inf', now)
  redis.call('ZADD', G, now + GONE, m)
  redis.call('EXPIRE', G, GONE + 600)
end

-- reservations whose process never settled them (killed, hung) are reclaimed and marked
local function reclaim(U, G, s, fields)
  fields = fields or redis.call('HGETALL', U)
  local flight = 0
  for i = 1, #fields, 2 do
    local f = fields[i]
    if string.sub(f, 1, 2) == 'r:' and not s.del[f] then
      local v = s.set[f] or fields[i + 1]
      local _, _, _, d = parse(v)
      if d and d <= now then
        release(U, s, v)
        drop(s, f)
        mark(G, 'x:' .. string.sub(f, 3))
      else
        flight = flight + 1
      end
    end
  end
  return flight
end

-- the first call of a bucket: one pass over the whole hash
local function open(U, G, s, kind, who, b, lo_new)
  local fields = redis.call('HGETALL', U)
  local T, C, moved = 0, 0, {}
  for i = 1, #fields, 2 do
    local f, v = fields[i], fields[i + 1]
    local head, rest = string.sub(f, 1, 1), string.sub(f, 2)
    local bucket = tonumber(rest)
    if (head == 't' or head == 'c') and bucket then
      if bucket < lo_new or bucket > b then
        drop(s, f)
      elseif head == 't' then
        T = T + tonumber(v)
      else
        C = C + tonumber(v)
      end
    elseif head == 'r' then
      local rb, rt, rc, d = parse(v)
      -- in flight from a bucket that left the window: into this one (a calendar window's call that ran over its
      -- end); not in the sliding minute, where a request counts at the second it was sent and leaves with it
      if rb and rb < lo_new and kind ~= 'n' then
        moved[#moved + 1] = {f, string.format('%d:%d:%d:%.3f', b, rt, rc, d), rt, rc}
      end
    end
  end
  s.T, s.C, s.lo = T, C, lo_new
  for _, m in ipairs(moved) do
    put(s, m[1], m[2])
    s.t, s.c, s.T, s.C = s.t + m[3], s.c + m[4], s.T + m[3], s.C + m[4]
  end
  put(s, 'lo', int(lo_new))
  put(s, 'id', who)
  s.expire = KEEP[kind]
  reclaim(U, G, s, fields)
end

-- field values as this script call will leave them (what it set or deleted, over what it read)
local function overlay(s, fields, values)
  for i, f in ipairs(fields) do
    if s.del[f] then values[i] = false elseif s.set[f] then values[i] = s.set[f] end
  end
  return values
end

-- a principal's window, rolled to now, and the values of `extra` fields, read in the same HMGET
local function load(U, G, window, who, extra)
  local s = state[U]
  if s then
    return s, extra and overlay(s, extra, redis.call('HMGET', U, unpack(extra))) or {}
  end
  local kind = string.sub(window, 1, 1)
  local shift = tonumber(string.sub(window, 2)) or 0  -- 'm28800': the month in local time at UTC+8; 'k15': lease
  local b
  if SIZE[kind] then
    b = math.floor(now / SIZE[kind])
  elseif kind == 'k' then
    b = 0
  elseif kind == 'm' then
    b = month_index(now + shift)
  elseif kind == 'y' then
    b = math.floor(month_index(now + shift) / 12)
  else  -- local days since 1970-01-01 (a Thursday); ISO weeks begin on Monday, day 4
    local day = math.floor((now + shift) / 86400)
    b = kind == 'd' and day or math.floor((day + 3) / 7)
  end
  local lo_new = b - SPAN[kind]
  local fields = {'lo', 'T', 'C', 't' .. b, 'c' .. b}
  for _, f in ipairs(extra or {}) do fields[#fields + 1] = f end
  local row = redis.call('HMGET', U, unpack(fields))
  local lo = tonumber(row[1])
  if lo ~= nil and lo > lo_new then  -- a clock that went back counts in the newest bucket it can
    b = lo + SPAN[kind]
    fields[4], fields[5] = 't' .. b, 'c' .. b
    row = redis.call('HMGET', U, unpack(fields))
  end
  s = {b = b, lo = lo or lo_new, T = tonumber(row[2]) or 0, C = tonumber(row[3]) or 0,
       t = tonumber(row[4]) or 0, c = tonumber(row[5]) or 0, opened = false, dirty = false, set = {}, del = {},
       kind = kind, lease = kind == 'k' and shift or nil}
  state[U] = s
  if lo == nil or lo < lo_new then
    s.opened = true
    s.t, s.c = lo == nil and 0 or s.t, lo == nil and 0 or s.c
    open(U, G, s, kind, who, b, lo_new)
  end
  local values = {}
  for i = 6, #row do values[#values + 1] = row[i] end
  return s, extra and overlay(s, extra, values) or {}
end

-- writes what changed: one HSET (and one HDEL) per principal
local function save()
  for U, s in pairs(state) do
    if s.dirty then
      local args = {'T', int(s.T), 'C', int(s.C), 't' .. s.b, int(s.t), 'c' .. s.b, int(s.c)}
      for f, v in pairs(s.set) do args[#args + 1] = f; args[#args + 1] = v end
      redis.call('HSET', U, unpack(args))
      local gone = {}
      for f in pairs(s.del) do gone[#gone + 1] = f end
      if #gone > 0 then redis.call('HDEL', U, unpack(gone)) end
    end
    if s.expire then redis.call('EXPIRE', U, s.expire) end
  end
end

-- settlements carried by a script call: a JSON array of parts, each [window kind, principal id, held ('' =
-- nothing held), reservation id, true tokens, true cost] (one argument for all: redis-py spends a microsecond
-- and more encoding each argument); their keys (usage, marks per part) start
-- at KEYS[first]. Each releases its reservation and counts the true usage in the current bucket,
-- where the metrics count it too; sent twice, it counts once. Nothing held and no usage: a cancel
-- (releases a reservation whose reply was lost, if there is one; leaves no mark).
local function settle_parts(json, first)
  local parts = cjson.decode(json)
  for j = 1, #parts do
    local part, k = parts[j], first + (j - 1) * 2
    local U, G = KEYS[k], KEYS[k + 1]
    local held, id = part[3], part[4]
    local tokens, cost = tonumber(part[5]), tonumber(part[6])
    local s, v = load(U, G, part[1], part[2], {'r:' .. id})
    local apply, at = false, nil
    if held == '' and tokens == 0 and cost == 0 then  -- a cancel
      if v[1] then release(U, s, v[1]); drop(s, 'r:' .. id) end
    elseif held == '' then  -- let through while the store failed: count once
      if redis.call('ZSCORE', G, 'n:' .. id) == false then
        mark(G, 'n:' .. id)
        if v[1] then release(U, s, v[1]); drop(s, 'r:' .. id) end  -- its reply was lost
        apply = true
      end
    elseif v[1] then  -- the common case
      at = parse(v[1])
      release(U, s, v[1])
      drop(s, 'r:' .. id)
      apply = true
    else  -- reclaimed unsettled: counts now; else already applied: skip
      apply = redis.call('ZREM', G, 'x:' .. id) == 1
    end
    -- the sliding minute counts a request (and its tokens) at the second it was sent, while that is in the
    -- window; after, nothing (a call let through while the store failed, sent at a time unknown: now)
    if apply and s.kind == 'n' and at then
      if at >= s.lo then add(U, s, at, tokens, cost) end
    elseif apply then
      add(U, s, s.b, tokens, cost)
    end
  end
end
"""

# KEYS: usage, marks per principal window, then per settlement part. ARGV: now ('' = Redis TIME), reservation
# id, ttl seconds, the charges as a JSON array, each [window kind (r, n, k<lease>, or d/w/m/y + the UTC offset),
# principal id, tokens, cost, token limit, cost limit ('' = none), refuse ratio, downgrade ratio ('' = none)];
# then the settlements this call carries (see settle_parts), applied first, so a caller's own finished calls
# count at their true usage and cost no round trip of their own.
# Returns {0, bucket...} (reserved: the bucket each principal's part is held in),
# {1, i, quota, used, amount, limit, retry after, calendar} (refused: principal i would cross; seconds until it
# would fit in every sliding window that refuses it, as text, '-1' none, '-2' never; the indexes of the calendar
# windows that refuse it too), or
# {2, i, quota, used, amount, limit} (crosses a downgrade level: nothing reserved, ask again cheaper).
RESERVE = _PRELUDE + REFUSAL + r"""
local id, ttl, charges = ARGV[2], tonumber(ARGV[3]), cjson.decode(ARGV[4])
local n = #charges
settle_parts(ARGV[5], n * 2 + 1)

-- the first limit principal i's call would cross: {status, i, quota, used, amount, limit} or nil
-- (a refusal on any quota before a downgrade on any)
local function check(i, row)
  for status = 1, 2 do
    local ratio = row.downgrade  -- not `status == 1 and row.refuse or ...`: a nil refuse would pick the downgrade
    if status == 1 then ratio = row.refuse end
    for q = 1, 2 do
      local limit = row.limits[q]
      if ratio and limit and row.amount[q] > 0 and row.used[q] + row.amount[q] > limit * ratio then
        return {status, i, q, row.used[q], row.amount[q], limit}
      end
    end
  end
  return nil
end

local rows, verdict = {}, nil
for i = 1, n do
  local c, U, G = charges[i], KEYS[i * 2 - 1], KEYS[i * 2]
  local s = load(U, G, c[1], c[2])
  local row = {U = U, G = G, s = s, used = {s.T, s.C},
               amount = {tonumber(c[3]), tonumber(c[4])},
               limits = {tonumber(c[5]), tonumber(c[6])},
               refuse = tonumber(c[7]), downgrade = tonumber(c[8])}
  local crossing = check(i, row)
  if crossing and not s.opened then  -- expired reservations matter only here: reclaim, judge again
    reclaim(U, G, s)
    row.used = {s.T, s.C}
    crossing = check(i, row)
  end
  if crossing and crossing[1] == 1 then
    crossing = refusal(crossing, i, row, n, charges)
    save()
    return crossing
  end
  verdict = verdict or crossing
  rows[i] = row
end
if verdict then save(); return verdict end
local reply = {0}
for i, row in ipairs(rows) do
  local s = row.s
  add(row.U, s, s.b, row.amount[1], row.amount[2])
  put(s, 'r:' .. id, string.format('%d:%d:%d:%.3f', s.b, row.amount[1], row.amount[2], now + (s.lease or ttl)))
  reply[i + 1] = s.b
end
save()
return reply
"""

# KEYS: usage, marks per settlement part. ARGV: now, then the parts as JSON (see settle_parts).
SETTLE = _PRELUDE + r"""
settle_parts(ARGV[2], 1)
save()
return 0
"""

# KEYS: usage, marks of one principal. ARGV: now, window kind, principal id.
# Returns {tokens, cost}: what the next reservation would be judged against (calls in flight at their worst
# case, expired ones not yet reclaimed included). Cheap enough for every page view: one HMGET; writes only
# when the window rolled (as any call would), and nothing at all for a principal never charged.
PEEK = _PRELUDE + r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local s = load(KEYS[1], KEYS[2], ARGV[2], ARGV[3])
save()
return {s.T, s.C}
"""

# KEYS: usage hash of each call in flight's `concurrent` part. ARGV: now, lease seconds, then the reservation id of
# each key. Moves each lease's deadline to now + lease (one that was reclaimed stays gone: its slot was given back).
RENEW = _NOW + r"""
local lease, renewed = tonumber(ARGV[2]), 0
for i, U in ipairs(KEYS) do
  local f = 'r:' .. ARGV[i + 2]
  local v = redis.call('HGET', U, f)
  if v then
    local head = string.match(v, '^(-?%d+:%d+:%d+):')
    redis.call('HSET', U, f, string.format('%s:%.3f', head, now + lease))
    redis.call('EXPIRE', U, 3600)
    renewed = renewed + 1
  end
end
return renewed
"""

# KEYS: usage, marks of one principal. ARGV: now, window kind, principal id.
# Returns {tokens, cost, reservations in flight}, after reclaiming expired reservations (reads the whole hash:
# for operators and tests, not for every page view).
READ = _PRELUDE + r"""
local s = load(KEYS[1], KEYS[2], ARGV[2], ARGV[3])
local flight = reclaim(KEYS[1], KEYS[2], s)
save()
return {s.T, s.C, flight}
"""
