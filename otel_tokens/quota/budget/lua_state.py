"""The part of every budget script that reads and writes a principal's windows (layout 3): one hash per principal
holding all its windows, so a call costs one HMGET and one HSET per principal whatever the number of windows.

Per principal two keys under one hash tag (one Redis Cluster slot):
  usage  hash  S: every window packed (struct: the number of windows, then per window its prefix, '' for the
               scope's own window, else the window's name and a dot, `day.`; its current bucket; T / C, tokens /
               cost in the window, reservations included; t / c, the current bucket's own); the sliding windows'
               older buckets, <prefix>t<bucket> / <prefix>c<bucket>; <prefix>r:<reservation> =
               "bucket:tokens:cost:deadline" for each call in flight and window; id (the principal, for operators)
  marks  zset  x:<prefix><reservation> (reclaimed unsettled) and n:<prefix><reservation> (settled with nothing
               held) -> when the mark is dropped (24 h), so that a settlement sent twice counts once, and one that
               comes after its reservation was reclaimed still counts. Touched only off the common path.
Buckets: the rolling 24 h (`r`) 5 minutes, the latest 5-minute boundary at least 24 h ago up to now (289 buckets,
as the Prometheus rules count); the sliding minute (`n`: tokens, and requests in the cost column) 1 second, the
60 whole seconds before the current one and the current one (never more than the limit in any 60 s, refused at
most 1 s longer than an exact log would); the calls in flight (`k<lease>`) one bucket forever, each call a
reservation of 1 whose deadline is its lease, renewed by its process while it runs; a calendar window one
bucket, the local day (`d`), ISO week (`w`), month (`m`) or year (`y`) in the organization's time zone (Lua has no
tzdata: the client sends the zone's UTC offset at the call's time with the kind, `d28800`; `m` alone is the UTC
month). Cost is held in integer nano-units of the currency, exact below 2^53. Time is Redis's own clock (`TIME`),
one clock for every process, unless the caller passes one (tests).

A window whose oldest bucket left drops the buckets that left (read by name: no pass over the hash, which holds
every window); a calendar or rolling window's turn also reclaims expired reservations and moves a calendar
window's calls still in flight into its new bucket (one HGETALL; the minute's turn, every second, does not). A
window met for the first time takes over what layout 2 kept for it (the scope's own window's fields lo, T, C in
this hash; any other window's key `<usage>:<window>` and its marks), once, so an upgrade loses no usage.
"""

from __future__ import annotations

# the time of a script call: the caller's (tests), else Redis's own clock, one clock for every process
NOW = r"""
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
"""

STATE = NOW + r"""
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

-- buckets before the current one still in the window (a calendar window and the calls in flight: one bucket)
local SPAN = {r = 288, n = 60, d = 0, w = 0, m = 0, y = 0, k = 0}
local SIZE = {r = 300, n = 1}             -- seconds per bucket of the sliding windows
-- key expiry: longer than the window (Antarctica/Troll's 2-hour DST change makes a 26-hour day and a 170-hour
-- week), and than a window that a zone change moving the clock back 26 h lengthens: the hash keeps the longest of
-- its windows' (24 h 10 min, 3 days, 9 days, 33 days, 368 days)
local KEEP = {r = 87000, d = 259200, w = 777600, m = 2851200, y = 31795200, n = 600, k = 3600}
local GONE = 86400                        -- seconds a settlement may come late or again and count once
local acct = {}                           -- usage key -> what this script call knows of the principal

local function int(x) return string.format('%d', x) end  -- Redis would write a Lua 100 as '1e2'

local function parse(v)  -- a reservation: bucket, tokens, cost, deadline
  local b, t, c, d = string.match(v, '^(-?%d+):(%d+):(%d+):([%d.]+)$')
  return tonumber(b), tonumber(t), tonumber(c), tonumber(d)
end

local function put(a, f, v) a.set[f] = v; a.del[f] = nil; a.dirty = true end
local function drop(a, f) a.set[f] = nil; a.del[f] = true; a.dirty = true end

-- field values as this script call will leave them (what it set or deleted, over what it read)
local function overlay(a, fields, values)
  for i, f in ipairs(fields) do
    if a.del[f] then values[i] = false elseif a.set[f] then values[i] = a.set[f] end
  end
  return values
end

local function add(a, s, b, tokens, cost)
  if tokens == 0 and cost == 0 then return end
  if b == s.b then
    s.t, s.c = s.t + tokens, s.c + cost
  else  -- an older bucket (a reservation made before the current one began)
    for _, fv in ipairs({{s.p .. 't' .. b, tokens}, {s.p .. 'c' .. b, cost}}) do
      local f, v = fv[1], fv[2]
      if v ~= 0 and a.set[f] then  -- written by this script call (the bucket just became an older one)
        a.set[f] = int(tonumber(a.set[f]) + v)
      elseif v ~= 0 then
        redis.call('HINCRBY', a.U, f, int(v))
      end
    end
  end
  s.T, s.C, a.dirty = s.T + tokens, s.C + cost, true
end

-- gives back what a reservation holds, from its own bucket if that is still in the window
local function release(a, s, v)
  local b, t, c = parse(v)
  if b == nil or b < s.lo then return end
  add(a, s, b, -t, -c)
end

local function mark(a, m)  -- a mark of this call, and the expired ones gone
  redis.call('ZREMRANGEBYSCORE', a.G, '-inf', now)
  redis.call('ZADD', a.G, now + GONE, m)
  redis.call('EXPIRE', a.G, GONE + 600)
end

-- one pass over the hash: reclaims the expired reservations of every window loaded (their process never settled
-- them: killed, hung), moves a calendar window's calls in flight from a bucket that left into the current one,
-- and counts each window's calls in flight
local function sweep(a)
  for _, s in pairs(a.w) do s.flight, s.swept = 0, true end  -- a window loaded later is not swept yet
  local fields = redis.call('HGETALL', a.U)
  local known = {}
  for i = 1, #fields, 2 do known[fields[i]] = true end
  for f, v in pairs(a.set) do  -- written by this script call only (a window taken over from layout 2)
    if not known[f] then fields[#fields + 1] = f; fields[#fields + 1] = v end
  end
  for i = 1, #fields, 2 do
    local f = fields[i]
    local p, id = string.match(f, '^(%w*%.?)r:(.+)$')
    local s = p and a.w[p]
    if s and not a.del[f] then
      local v = a.set[f] or fields[i + 1]
      local b, t, c, d = parse(v)
      if d and d <= now then
        release(a, s, v)
        drop(a, f)
        mark(a, 'x:' .. p .. id)
      elseif d then
        if b < s.lo and s.span == 0 and s.kind ~= 'k' then
          put(a, f, string.format('%d:%d:%d:%.3f', s.b, t, c, d))
          s.t, s.c, s.T, s.C = s.t + t, s.c + c, s.T + t, s.C + c
        end
        s.flight = s.flight + 1
      end
    end
  end
end

-- drops the buckets lo .. lo_new - 1 that left the window (none beyond lo + span exists)
local function roll(a, s, lo, lo_new)
  if lo_new > lo + s.span then
    s.T, s.C, s.t, s.c = 0, 0, 0, 0
    for x = lo, lo + s.span do drop(a, s.p .. 't' .. x); drop(a, s.p .. 'c' .. x) end
    return
  end
  local gone = {}
  for x = lo, lo_new - 1 do gone[#gone + 1] = s.p .. 't' .. x; gone[#gone + 1] = s.p .. 'c' .. x end
  local values = overlay(a, gone, redis.call('HMGET', a.U, unpack(gone)))
  for i = 1, #gone, 2 do
    s.T, s.C = s.T - (tonumber(values[i]) or 0), s.C - (tonumber(values[i + 1]) or 0)
    drop(a, gone[i]); drop(a, gone[i + 1])
  end
end

-- layout 2 kept the scope's own window in this hash (fields lo, T, C, t<b>, c<b>) and any other in a key of its own
-- (`<usage>:day`): taken over once, as {bucket, T, C, t, c}; its older buckets and calls in flight keep their
-- fields (moved under the window's prefix)
local function legacy(a, s)
  local b, T, C, t, c
  if s.p == '' then
    local row = redis.call('HMGET', a.U, 'lo', 'T', 'C')
    if not row[1] then return nil end
    b = tonumber(row[1]) + s.span
    local tc = redis.call('HMGET', a.U, 't' .. b, 'c' .. b)
    T, C, t, c = tonumber(row[2]) or 0, tonumber(row[3]) or 0, tonumber(tc[1]) or 0, tonumber(tc[2]) or 0
    for _, f in ipairs({'lo', 'T', 'C', 't' .. b, 'c' .. b}) do drop(a, f) end
    a.opened = true  -- written now, with the expiry of the longest window (the takeover must not be lost)
    return {b, T, C, t, c}
  end
  local old = a.U .. ':' .. string.sub(s.p, 1, -2)
  local fields = redis.call('HGETALL', old)
  if #fields == 0 then return nil end
  local per = {}
  for i = 1, #fields, 2 do per[fields[i]] = fields[i + 1] end
  b = (tonumber(per.lo) or 0) + s.span
  for f, v in pairs(per) do
    if f ~= 'lo' and f ~= 'T' and f ~= 'C' and f ~= 'id' and f ~= 't' .. b and f ~= 'c' .. b then
      put(a, s.p .. f, v)
    end
  end
  -- its marks (reclaimed and let-through calls) too, under the window's prefix, so a late settlement counts once
  local marks = redis.call('ZRANGEBYSCORE', old .. ':marks', now, '+inf', 'WITHSCORES')
  for i = 1, #marks, 2 do
    redis.call('ZADD', a.G, marks[i + 1], string.sub(marks[i], 1, 2) .. s.p .. string.sub(marks[i], 3))
  end
  if #marks > 0 then redis.call('EXPIRE', a.G, GONE + 600) end
  redis.call('DEL', old, old .. ':marks')
  a.opened, a.dirty = true, true
  return {b, tonumber(per.T) or 0, tonumber(per.C) or 0, tonumber(per['t' .. b]) or 0, tonumber(per['c' .. b]) or 0}
end

-- the field S: every window of the principal packed (the number of windows, then per window its prefix, its
-- current bucket, T, C, and the current bucket's t and c): one field read and written per call, however many
-- windows. Windows a call does not charge are kept as they are.
local function unpack_state(a, raw)
  a.rest = {}
  if not raw then return end
  local n = string.byte(raw, 1)
  local v = {struct.unpack(string.rep('sddddd', n), raw, 2)}
  for i = 0, n - 1 do
    local j = i * 6
    a.rest[v[j + 1]] = {v[j + 2], v[j + 3], v[j + 4], v[j + 5], v[j + 6]}
  end
end

local function bucket(kind, shift)
  if SIZE[kind] then return math.floor(now / SIZE[kind]) end
  if kind == 'k' then return 0 end
  if kind == 'm' then return month_index(now + shift) end
  if kind == 'y' then return math.floor(month_index(now + shift) / 12) end
  local day = math.floor((now + shift) / 86400)  -- local days since 1970-01-01, a Thursday
  return kind == 'd' and day or math.floor((day + 3) / 7)  -- ISO weeks begin on Monday
end

-- a principal's windows `wins` ({prefix, kind} each), rolled to now, and the values of the `extra` fields: one
-- HMGET for all of them (windows already loaded by this script call are not read again)
local function load(U, G, who, wins, extra)
  local a, values = acct[U], {}
  if not a then
    a = {U = U, G = G, w = {}, set = {}, del = {}, dirty = false}
    acct[U] = a
    local row = redis.call('HMGET', U, 'S', unpack(extra or {}))
    unpack_state(a, row[1])
    for i = 2, #row do values[i - 1] = row[i] end
  elseif extra and #extra > 0 then
    values = redis.call('HMGET', U, unpack(extra))
  end
  local turned = false
  for _, w in ipairs(wins) do
    local p = w[1]
    if not a.w[p] then
      local kind = string.sub(w[2], 1, 1)
      local shift = tonumber(string.sub(w[2], 2)) or 0  -- 'm28800': the month at UTC+8; 'k15': the lease
      local s = {p = p, kind = kind, span = SPAN[kind], b = bucket(kind, shift), lease = kind == 'k' and shift or nil}
      a.w[p] = s
      local st = a.rest[p] or legacy(a, s)
      a.rest[p] = nil
      if st == nil then  -- a window never charged
        s.T, s.C, s.t, s.c = 0, 0, 0, 0
        a.opened, a.dirty = true, true
      else
        s.T, s.C = st[2], st[3]
        if s.b <= st[1] then  -- the same bucket; or a clock that went back: counts in the newest it can
          s.b, s.t, s.c = st[1], st[4], st[5]
        else  -- a new bucket: the one before becomes a field of its own, the buckets that left are dropped
          if s.span > 0 and (st[4] ~= 0 or st[5] ~= 0) then
            put(a, p .. 't' .. st[1], int(st[4]))
            put(a, p .. 'c' .. st[1], int(st[5]))
          end
          s.t, s.c = 0, 0
          roll(a, s, st[1] - s.span, s.b - s.span)
          a.opened, a.dirty = true, true
          if kind ~= 'n' then turned = true end
        end
      end
      s.lo = s.b - s.span
    end
  end
  if a.opened and who then put(a, 'id', who) end
  if turned then sweep(a) end
  return a, extra and overlay(a, extra, values) or {}
end

-- writes what changed: one HSET (and one HDEL) per principal; the expiry of its longest window
local function save()
  for U, a in pairs(acct) do
    if a.dirty then
      local args, packed, n = {}, {}, 0
      for f, v in pairs(a.set) do args[#args + 1] = f; args[#args + 1] = v end
      for p, s in pairs(a.w) do
        packed[n * 6 + 1], packed[n * 6 + 2], packed[n * 6 + 3] = p, s.b, s.T
        packed[n * 6 + 4], packed[n * 6 + 5], packed[n * 6 + 6] = s.C, s.t, s.c
        n = n + 1
      end
      for p, st in pairs(a.rest) do
        packed[n * 6 + 1], packed[n * 6 + 2], packed[n * 6 + 3] = p, st[1], st[2]
        packed[n * 6 + 4], packed[n * 6 + 5], packed[n * 6 + 6] = st[3], st[4], st[5]
        n = n + 1
      end
      args[#args + 1] = 'S'
      args[#args + 1] = string.char(n) .. struct.pack(string.rep('sddddd', n), unpack(packed))
      redis.call('HSET', U, unpack(args))
      local gone = {}
      for f in pairs(a.del) do gone[#gone + 1] = f end
      if #gone > 0 then redis.call('HDEL', U, unpack(gone)) end
    end
    if a.opened then  -- never shortened: a window loaded alone (a read) must not expire the others
      local keep = 0
      for _, s in pairs(a.w) do keep = math.max(keep, KEEP[s.kind]) end
      if redis.call('TTL', U) < keep then redis.call('EXPIRE', U, keep) end
    end
  end
end
"""
