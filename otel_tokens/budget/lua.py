"""The Lua scripts of budget mode. Each runs atomically in Redis, so no two calls can both see room
for themselves (the check-then-increment race of client-side budgets).

Per principal, two keys share one hash tag (one Redis Cluster slot):
  usage  hash   lo (oldest bucket in the window), T / C (tokens / cost in the window, reservations
                included), t<bucket> / c<bucket> (per bucket), id (the principal, for operators)
  held   zset   reservations in flight, "id:bucket:tokens:cost" -> when it is reclaimed
Buckets: users 5 minutes, the window being the latest 5-minute boundary at least 24 h ago up to now
(289 buckets, as the Prometheus rules count); departments one calendar month (UTC). Cost is held in
integer nano-units of the currency so sums are exact. Time is Redis's own clock (`TIME`), one clock
for every process, unless the caller passes one (tests). A reservation is one ZADD and two or four
HINCRBYs per principal; bucket roll-over and key expiry run once per bucket, not per call.
"""

from __future__ import annotations

_PRELUDE = r"""
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end

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

local SPAN = {r = 288, m = 0}            -- buckets before the current one still in the window
local KEEP = {r = 87000, m = 2764800}     -- key expiry after a bucket's first write: 24 h 10 min, 32 days

-- drops the buckets that left the window; returns the current bucket, the window's totals, whether
-- this call opened a new bucket (the caller then refreshes the key expiry) and the oldest bucket kept
local function roll(U, kind, who)
  local b = kind == 'r' and math.floor(now / 300) or month_index(now)
  local lo_new = b - SPAN[kind]
  local row = redis.call('HMGET', U, 'lo', 'T', 'C')
  local lo = tonumber(row[1])
  if lo ~= nil and lo >= lo_new then  -- the common case; a clock that went back counts in the oldest bucket
    return math.max(b, lo), tonumber(row[2]) or 0, tonumber(row[3]) or 0, false, lo
  end
  if lo ~= nil and lo_new - lo <= SPAN[kind] then
    for i = lo, lo_new - 1 do
      local old = redis.call('HMGET', U, 't' .. i, 'c' .. i)
      if old[1] then redis.call('HINCRBY', U, 'T', -tonumber(old[1])) end
      if old[2] then redis.call('HINCRBY', U, 'C', -tonumber(old[2])) end
      if old[1] or old[2] then redis.call('HDEL', U, 't' .. i, 'c' .. i) end
    end
  elseif lo ~= nil then  -- every bucket held is out of the window
    redis.call('DEL', U)
  end
  redis.call('HSET', U, 'lo', lo_new, 'id', who)
  redis.call('EXPIRE', U, KEEP[kind])
  row = redis.call('HMGET', U, 'T', 'C')
  return b, tonumber(row[1]) or 0, tonumber(row[2]) or 0, true, lo_new
end

local function add(U, b, tokens, cost)
  if tokens ~= 0 then redis.call('HINCRBY', U, 't' .. b, tokens); redis.call('HINCRBY', U, 'T', tokens) end
  if cost ~= 0 then redis.call('HINCRBY', U, 'c' .. b, cost); redis.call('HINCRBY', U, 'C', cost) end
end

local function parse(member)
  local b, t, c = string.match(member, ':(-?%d+):(%d+):(%d+)$')
  return tonumber(b), tonumber(t), tonumber(c)
end

-- gives back what a reservation holds, from its own bucket if that is still in the window
local function release(U, member, lo)
  local b, t, c = parse(member)
  if b == nil or b < lo then return 0, 0 end
  add(U, b, -t, -c)
  return t, c
end

-- a finished call: release its reservation (unless already reclaimed), count its true usage in the
-- current bucket, where the metrics count it too (one increment of the difference when the
-- reservation was made in the same bucket, the common case)
local function settle_part(U, E, kind, who, member, tokens, cost)
  local b, _, _, _, lo = roll(U, kind, who)
  if member ~= '' and redis.call('ZREM', E, member) == 1 then
    local rb, rt, rc = parse(member)
    if rb == b then
      tokens, cost = tokens - rt, cost - rc
    else
      release(U, member, lo)
    end
  end
  add(U, b, tokens, cost)
end

-- settlements carried by a script call: count, then per part kind, id, member, tokens, cost;
-- their keys (usage, held per part) start at KEYS[first]
local function settle_parts(a, first)
  local m = tonumber(ARGV[a])
  for j = 1, m do
    local p, k = a + (j - 1) * 5, first + (j - 1) * 2
    settle_part(KEYS[k], KEYS[k + 1], ARGV[p + 1], ARGV[p + 2], ARGV[p + 3], tonumber(ARGV[p + 4]),
                tonumber(ARGV[p + 5]))
  end
end

-- reservations whose process never settled them (killed, hung) are reclaimed
local function reclaim(U, E, lo)
  local t, c = 0, 0
  local members = redis.call('ZRANGEBYSCORE', E, '-inf', now, 'LIMIT', 0, 100)
  for _, member in ipairs(members) do
    local dt, dc = release(U, member, lo)
    t, c = t + dt, c + dc
    redis.call('ZREM', E, member)
  end
  return t, c
end
"""

# KEYS: usage, held per principal, then usage, held per settlement part. ARGV: now ('' = Redis
# TIME), reservation id, ttl seconds, principal count, then per principal: window kind (r|m),
# principal id, tokens, cost, token limit, cost limit ('' = none), refuse ratio, downgrade ratio
# ('' = none); then the settlements this call carries (see settle_parts), applied first, so a
# caller's own finished calls count at their true usage and cost no round trip of their own.
# Returns {0, bucket...} (reserved: the bucket each principal's part is held in),
# {1, i, quota, used, amount, limit} (refused: principal i would cross), or
# {2, i, quota, used, amount, limit} (crosses a downgrade level: nothing reserved, ask again cheaper).
RESERVE = _PRELUDE + r"""
local id, ttl, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
settle_parts(5 + n * 8, n * 2 + 1)
local rows, verdict = {}, nil
for i = 1, n do
  local a, k = 4 + (i - 1) * 8, (i - 1) * 2
  local U, E = KEYS[k + 1], KEYS[k + 2]
  local b, T, C, opened, lo = roll(U, ARGV[a + 1], ARGV[a + 2])
  local rt, rc = reclaim(U, E, lo)
  local used = {T - rt, C - rc}
  local amount = {tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])}
  local limits = {tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])}
  local refuse, downgrade = tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8])
  for q = 1, 2 do
    local limit = limits[q]
    if limit and amount[q] > 0 then
      local after = used[q] + amount[q]
      if refuse and after > limit * refuse then return {1, i, q, used[q], amount[q], limit} end
      if downgrade and not verdict and after > limit * downgrade then verdict = {2, i, q, used[q], amount[q], limit} end
    end
  end
  rows[i] = {U = U, E = E, b = b, tokens = amount[1], cost = amount[2], opened = opened}
end
if verdict then return verdict end
local reply = {0}
for i, row in ipairs(rows) do
  add(row.U, row.b, row.tokens, row.cost)
  redis.call('ZADD', row.E, now + ttl, string.format('%s:%d:%d:%d', id, row.b, row.tokens, row.cost))
  if row.opened then redis.call('EXPIRE', row.E, 87000) end  -- once per bucket, not per call
  reply[i + 1] = row.b
end
return reply
"""

# KEYS: usage, held per settlement part. ARGV: now, then the parts (see settle_parts).
SETTLE = _PRELUDE + r"""
settle_parts(2, 1)
return 0
"""

# KEYS: usage, held of one principal. ARGV: now, window kind, principal id.
# Returns {tokens, cost, reservations in flight}.
READ = _PRELUDE + r"""
local b, T, C, _, lo = roll(KEYS[1], ARGV[2], ARGV[3])
local rt, rc = reclaim(KEYS[1], KEYS[2], lo)
return {T - rt, C - rc, redis.call('ZCARD', KEYS[2])}
"""
