"""The Lua scripts of budget mode. Each runs atomically in Redis, so no two calls can both see room
for themselves (the check-then-increment race of client-side budgets).

Per principal, three keys share one hash tag (one Redis Cluster slot):
  usage  hash   lo (oldest bucket in the window), T / C (tokens / cost in the window, reservations
                included), t<bucket> / c<bucket> (per bucket), id (the principal, for operators)
  held   zset   reservations in flight, "id:bucket:tokens:cost" -> when it is reclaimed
  gone   zset   "x:id" reservations reclaimed unsettled, "n:id" settlements applied with nothing
                held -> when the mark is dropped (1 h): what makes a settlement sent twice (a reply
                lost to a timeout, a pipeline that failed half-way) count once
Buckets: users 5 minutes, the window being the latest 5-minute boundary at least 24 h ago up to now
(289 buckets, as the Prometheus rules count); departments one calendar month (UTC). Cost is held in
integer nano-units of the currency so sums are exact. Time is Redis's own clock (`TIME`), one clock
for every process, unless the caller passes one (tests).

Each principal's usage hash is read once per script call (HMGET) and written once (HSET), however
many settlements the call carries; bucket roll-over and key expiry run once per bucket, not per call.
A reservation with one carried settlement for the same two principals is eleven commands. A
settlement is idempotent: its reservation is found by its exact member, else by its id (moved into
a new month while in flight, or orphaned by a lost reply), else it was reclaimed (marked in gone:
count the true usage), else it was already applied (skip).
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
local GONE = 3600                         -- seconds a settlement may be sent again and still count once
local state = {}                          -- usage key -> what this script call knows of it

local function int(x) return string.format('%d', x) end  -- Redis would write a Lua 100 as '1e2'

local function parse(member)
  local id, b, t, c = string.match(member, '^(.*):(-?%d+):(%d+):(%d+)$')
  return id, tonumber(b), tonumber(t), tonumber(c)
end

-- a principal's window, rolled to now: the buckets that left it dropped, totals T / C, the current
-- bucket's values, whether this call opened the bucket. Reservations still in flight from a bucket
-- that left the window (a department's month ended mid-call) move into the current bucket.
local function load(U, E, G, kind, who)
  local s = state[U]
  if s then return s end
  local b = kind == 'r' and math.floor(now / 300) or month_index(now)
  local lo_new = b - SPAN[kind]
  local row = redis.call('HMGET', U, 'lo', 'T', 'C', 't' .. b, 'c' .. b)
  local lo = tonumber(row[1])
  local opened = false
  if lo ~= nil and lo > lo_new then  -- a clock that went back counts in the newest bucket it can
    b = lo + SPAN[kind]
    row = redis.call('HMGET', U, 'lo', 'T', 'C', 't' .. b, 'c' .. b)
  elseif lo == nil or lo < lo_new then
    opened = true
    if lo ~= nil and lo_new - lo <= SPAN[kind] then
      for i = lo, lo_new - 1 do
        local old = redis.call('HMGET', U, 't' .. i, 'c' .. i)
        if old[1] then redis.call('HINCRBY', U, 'T', int(-tonumber(old[1]))) end
        if old[2] then redis.call('HINCRBY', U, 'C', int(-tonumber(old[2]))) end
        if old[1] or old[2] then redis.call('HDEL', U, 't' .. i, 'c' .. i) end
      end
    elseif lo ~= nil then  -- every bucket held is out of the window
      redis.call('DEL', U)
    end
    local moved_t, moved_c = 0, 0
    local flight = redis.call('ZRANGEBYSCORE', E, now, '+inf', 'WITHSCORES')
    for i = 1, #flight, 2 do
      local id, mb, mt, mc = parse(flight[i])
      if mb and mb < lo_new then
        redis.call('ZREM', E, flight[i])
        redis.call('ZADD', E, flight[i + 1], string.format('%s:%d:%d:%d', id, b, mt, mc))
        moved_t, moved_c = moved_t + mt, moved_c + mc
      end
    end
    redis.call('HSET', U, 'lo', int(lo_new), 'id', who)
    if moved_t ~= 0 or moved_c ~= 0 then
      redis.call('HINCRBY', U, 't' .. b, int(moved_t)); redis.call('HINCRBY', U, 'T', int(moved_t))
      redis.call('HINCRBY', U, 'c' .. b, int(moved_c)); redis.call('HINCRBY', U, 'C', int(moved_c))
    end
    redis.call('EXPIRE', U, KEEP[kind])
    redis.call('ZREMRANGEBYSCORE', G, '-inf', now)
    redis.call('EXPIRE', G, KEEP[kind])
    row = redis.call('HMGET', U, 'lo', 'T', 'C', 't' .. b, 'c' .. b)
  end
  s = {b = b, lo = tonumber(row[1]), T = tonumber(row[2]) or 0, C = tonumber(row[3]) or 0,
       t = tonumber(row[4]) or 0, c = tonumber(row[5]) or 0, opened = opened, dirty = false}
  state[U] = s
  return s
end

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

-- writes what changed: one HSET per principal
local function save()
  for U, s in pairs(state) do
    if s.dirty then
      redis.call('HSET', U, 'T', int(s.T), 'C', int(s.C), 't' .. s.b, int(s.t), 'c' .. s.b, int(s.c))
    end
  end
end

-- gives back what a reservation holds, from its own bucket if that is still in the window
local function release(U, s, member)
  local _, b, t, c = parse(member)
  if b == nil or b < s.lo then return 0, 0 end
  add(U, s, b, -t, -c)
  return t, c
end

-- settlements carried by a script call: count, then per part kind, principal id, held member ('' =
-- nothing held), reservation id, true tokens, true cost; their keys (usage, held, gone per part)
-- start at KEYS[first]. Each releases its reservation and counts the true usage in the current
-- bucket, where the metrics count it too; sent twice, it counts once.
local function settle_parts(a, first)
  local m = tonumber(ARGV[a])
  for j = 1, m do
    local p, k = a + (j - 1) * 6, first + (j - 1) * 3
    local U, E, G = KEYS[k], KEYS[k + 1], KEYS[k + 2]
    local member, id = ARGV[p + 3], ARGV[p + 4]
    local s = load(U, E, G, ARGV[p + 1], ARGV[p + 2])
    local apply = false
    if member == '' then  -- nothing held: let through while the store was down, or its reply was lost
      apply = redis.call('ZADD', G, 'NX', now + GONE, 'n:' .. id) == 1
    elseif redis.call('ZREM', E, member) == 1 then
      release(U, s, member)
      apply = true
    end
    if (apply and member == '') or (not apply and member ~= '') then
      local found = redis.call('ZSCAN', E, 0, 'MATCH', id .. ':*', 'COUNT', 1000)[2][1]
      if found then  -- moved into a new month while in flight, or held by a reservation whose reply was lost
        redis.call('ZREM', E, found)
        release(U, s, found)
        apply = true
      elseif member ~= '' then  -- reclaimed unsettled (counts now), or already applied (skip)
        apply = redis.call('ZREM', G, 'x:' .. id) == 1
      end
    end
    if apply then add(U, s, s.b, tonumber(ARGV[p + 5]), tonumber(ARGV[p + 6])) end
  end
end

-- reservations whose process never settled them (killed, hung) are reclaimed
local function reclaim(U, E, G, s)
  local members = redis.call('ZRANGEBYSCORE', E, '-inf', now, 'LIMIT', 0, 100)
  for _, member in ipairs(members) do
    release(U, s, member)
    redis.call('ZREM', E, member)
    redis.call('ZADD', G, now + GONE, 'x:' .. parse(member))
  end
end
"""

# KEYS: usage, held, gone per principal, then per settlement part. ARGV: now ('' = Redis TIME),
# reservation id, ttl seconds, principal count, then per principal: window kind (r|m), principal
# id, tokens, cost, token limit, cost limit ('' = none), refuse ratio, downgrade ratio ('' = none);
# then the settlements this call carries (see settle_parts), applied first, so a caller's own
# finished calls count at their true usage and cost no round trip of their own.
# Returns {0, bucket...} (reserved: the bucket each principal's part is held in),
# {1, i, quota, used, amount, limit} (refused: principal i would cross), or
# {2, i, quota, used, amount, limit} (crosses a downgrade level: nothing reserved, ask again cheaper).
RESERVE = _PRELUDE + r"""
local id, ttl, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
settle_parts(5 + n * 8, n * 3 + 1)

-- the first limit principal i's call would cross: {status, i, quota, used, amount, limit} or nil
-- (a refusal on any quota before a downgrade on any)
local function check(i, row)
  for status = 1, 2 do
    local ratio = status == 1 and row.refuse or row.downgrade
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
  local a, k = 4 + (i - 1) * 8, (i - 1) * 3
  local U, E, G, kind = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[a + 1]
  local s = load(U, E, G, kind, ARGV[a + 2])
  local row = {U = U, E = E, s = s, kind = kind, used = {s.T, s.C},
               amount = {tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])},
               limits = {tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])},
               refuse = tonumber(ARGV[a + 7]), downgrade = tonumber(ARGV[a + 8])}
  local crossing = check(i, row)
  if crossing or s.opened then  -- expired reservations matter only here: reclaim them, judge again
    reclaim(U, E, G, s)
    row.used = {s.T, s.C}
    crossing = check(i, row)
  end
  if crossing and crossing[1] == 1 then save(); return crossing end
  verdict = verdict or crossing
  rows[i] = row
end
if verdict then save(); return verdict end
local reply = {0}
for i, row in ipairs(rows) do
  local s = row.s
  add(row.U, s, s.b, row.amount[1], row.amount[2])
  local member = string.format('%s:%d:%d:%d', id, s.b, row.amount[1], row.amount[2])
  redis.call('ZADD', row.E, string.format('%.3f', now + ttl), member)
  redis.call('EXPIRE', row.E, KEEP[row.kind])  -- a zset emptied and made again has no expiry
  reply[i + 1] = s.b
end
save()
return reply
"""

# KEYS: usage, held, gone per settlement part. ARGV: now, then the parts (see settle_parts).
SETTLE = _PRELUDE + r"""
settle_parts(2, 1)
save()
return 0
"""

# KEYS: usage, held, gone of one principal. ARGV: now, window kind, principal id.
# Returns {tokens, cost, reservations in flight}.
READ = _PRELUDE + r"""
local s = load(KEYS[1], KEYS[2], KEYS[3], ARGV[2], ARGV[3])
reclaim(KEYS[1], KEYS[2], KEYS[3], s)
save()
return {s.T, s.C, redis.call('ZCARD', KEYS[2])}
"""
