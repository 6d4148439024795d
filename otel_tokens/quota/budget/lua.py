"""The Lua scripts of budget mode. Each runs atomically in Redis, so no two calls can both see room for themselves
(the check-then-increment race of client-side budgets). How a principal's windows are kept: `lua_state`.

A principal's part of a call is sent once for all its windows: its id, then per window [prefix, kind, token limit,
cost limit, refuse ratio, downgrade ratio] (JSON: one argument for all; redis-py spends a microsecond and more
encoding each argument), the window's amount derived from its kind: the call's tokens and cost in a budget window,
its tokens and one request in the minute, one slot among the calls in flight.
"""

from __future__ import annotations

from otel_tokens.quota.budget.lua_refusal import REFUSAL
from otel_tokens.quota.budget.lua_state import NOW, STATE

# settlements carried by a script call: a JSON array of parts, one per principal of a finished call, each
# [principal id, windows ({prefix, kind, ...} each), held ('' = nothing held), reservation id, true tokens, true
# cost, sent (0: the call never left)]; their keys (usage, marks per part) start at KEYS[first]. Each releases its
# reservation and counts the true usage in the current bucket, where the metrics count it too; sent twice, it
# counts once. Nothing held and nothing to count: a cancel (releases a reservation whose reply was lost, if there
# is one; leaves no mark).
SETTLE_PARTS = r"""
local function settle_parts(json, first)
  local parts = cjson.decode(json)
  for j = 1, #parts do
    local part, k = parts[j], first + (j - 1) * 2
    local wins, held, id = part[2], part[3], part[4]
    local tokens, cost, sent = tonumber(part[5]), tonumber(part[6]), tonumber(part[7])
    local fields = {}
    for i, w in ipairs(wins) do fields[i] = w[1] .. 'r:' .. id end
    local a, v = load(KEYS[k], KEYS[k + 1], part[1], wins, fields)
    for i, w in ipairs(wins) do
      local s, f = a.w[w[1]], fields[i]
      -- the minute counts the call's tokens and one request (an error answer reached the GPU too), the calls in
      -- flight nothing (the slot is given back), a budget window the tokens and cost
      local tk, ck = tokens, cost
      if s.kind == 'n' then ck = sent elseif s.kind == 'k' then tk, ck = 0, 0 end
      local apply, at = false, nil
      if held == '' and tk == 0 and ck == 0 then  -- a cancel
        if v[i] then release(a, s, v[i]); drop(a, f) end
      elseif held == '' then  -- let through while the store failed: count once
        local m = 'n:' .. w[1] .. id
        if redis.call('ZSCORE', a.G, m) == false then
          mark(a, m)
          if v[i] then release(a, s, v[i]); drop(a, f) end  -- its reply was lost
          apply = true
        end
      elseif v[i] then  -- the common case
        at = parse(v[i])
        release(a, s, v[i])
        drop(a, f)
        apply = true
      else  -- reclaimed unsettled: counts now; else already applied: skip
        apply = redis.call('ZREM', a.G, 'x:' .. w[1] .. id) == 1
      end
      -- the sliding minute counts a request (and its tokens) at the second it was sent, while that is in the
      -- window; after, nothing (a call let through while the store failed, sent at a time unknown: now)
      if apply and s.kind == 'n' and at then
        if at >= s.lo then add(a, s, at, tk, ck) end
      elseif apply then
        add(a, s, s.b, tk, ck)
      end
    end
  end
end
"""

# KEYS: usage, marks per principal, then per settlement part. ARGV: now ('' = Redis TIME), reservation id, ttl
# seconds, the call's tokens, its cost, the principals' parts as a JSON array (see above), then the settlements
# this call carries (see SETTLE_PARTS), applied first, so a caller's own finished calls count at their true usage
# and cost no round trip of their own. Windows are numbered across principals from 1, in the order sent.
# Returns {0} (reserved in every window),
# {1, i, quota, used, amount, limit, retry after, calendar} (refused: window i would cross; seconds until it would
# fit in every sliding window that refuses it, as text, '-1' none, '-2' never; the numbers of the calendar windows
# that refuse it too), or
# {2, i, quota, used, amount, limit} (crosses a downgrade level: nothing reserved, ask again cheaper).
RESERVE = STATE + SETTLE_PARTS + REFUSAL + r"""
local id, ttl, tokens, cost = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local charges = cjson.decode(ARGV[6])
settle_parts(ARGV[7], #charges * 2 + 1)

local rows = {}
for i, g in ipairs(charges) do
  local wins = g[2]
  local a = load(KEYS[i * 2 - 1], KEYS[i * 2], g[1], wins)
  for _, w in ipairs(wins) do
    local s = a.w[w[1]]
    local amount = {tokens, cost}
    if s.kind == 'n' then amount[2] = 1 elseif s.kind == 'k' then amount = {1, 0} end
    rows[#rows + 1] = {a = a, s = s, amount = amount, limits = {tonumber(w[3]), tonumber(w[4])},
                       refuse = tonumber(w[5]), downgrade = tonumber(w[6])}
  end
end

-- the first limit window i's call would cross: {status, i, quota, used, amount, limit} or nil (a refusal on any
-- quota before a downgrade on any)
local function check(i, row)
  local used = {row.s.T, row.s.C}
  for status = 1, 2 do
    local ratio = row.downgrade  -- not `status == 1 and row.refuse or ...`: a nil refuse would pick the downgrade
    if status == 1 then ratio = row.refuse end
    for q = 1, 2 do
      local limit = row.limits[q]
      if ratio and limit and row.amount[q] > 0 and used[q] + row.amount[q] > limit * ratio then
        return {status, i, q, used[q], row.amount[q], limit}
      end
    end
  end
  return nil
end

local verdict = nil
for i, row in ipairs(rows) do
  local crossing = check(i, row)
  if crossing and not row.s.swept then  -- expired reservations matter only here: reclaim, judge again
    sweep(row.a)
    crossing = check(i, row)
  end
  if crossing and crossing[1] == 1 then
    crossing = refusal(crossing, rows)
    save()
    return crossing
  end
  verdict = verdict or crossing
end
if verdict then save(); return verdict end
for _, row in ipairs(rows) do
  local s = row.s
  add(row.a, s, s.b, row.amount[1], row.amount[2])
  put(row.a, s.p .. 'r:' .. id,
      string.format('%d:%d:%d:%.3f', s.b, row.amount[1], row.amount[2], now + (s.lease or ttl)))
end
save()
return {0}
"""

# KEYS: usage, marks per settlement part. ARGV: now, then the parts as JSON (see SETTLE_PARTS).
SETTLE = STATE + SETTLE_PARTS + r"""
settle_parts(ARGV[2], 1)
save()
return 0
"""

# KEYS: usage, marks of one principal. ARGV: now, window prefix, window kind, principal id, 'read' or ''.
# Returns {tokens, cost} (what the next reservation would be judged against: calls in flight at their worst case,
# expired ones not yet reclaimed included; cheap enough for every page view: one HMGET, writes only when the window
# rolled, as any call would, and nothing at all for a principal never charged), or with 'read'
# {tokens, cost, reservations in flight} after reclaiming expired ones (a pass over the hash: for operators and
# tests).
PEEK = STATE + r"""
local prefix = ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 and
   (prefix == '' or redis.call('EXISTS', KEYS[1] .. ':' .. string.sub(prefix, 1, -2)) == 0) then
  return {0, 0, 0}
end
local a = load(KEYS[1], KEYS[2], ARGV[4], {{prefix, ARGV[3]}})
local s = a.w[prefix]
if ARGV[5] == 'read' then sweep(a) end
save()
return {s.T, s.C, s.flight or 0}
"""

# KEYS: usage hash of each call in flight's principal. ARGV: now, lease seconds, then each key's field (the
# slot's reservation). Moves each lease's deadline to now + lease (one that was reclaimed stays gone: its slot was
# given back).
RENEW = NOW + r"""
local lease, renewed = tonumber(ARGV[2]), 0
for i, U in ipairs(KEYS) do
  local f = ARGV[i + 2]
  local v = redis.call('HGET', U, f)
  if v then
    local head = string.match(v, '^(-?%d+:%d+:%d+):')
    redis.call('HSET', U, f, string.format('%s:%.3f', head, now + lease))
    if redis.call('TTL', U) < 3600 then redis.call('EXPIRE', U, 3600) end
    renewed = renewed + 1
  end
end
return renewed
"""
