"""The part of the reservation script that explains a refusal: when the call would fit again (Retry-After), in
every window that refuses it, not only the first (a caller sent back after the minute must not walk into a day
that is also over). Uses lua_state's `now`, `SIZE`, `SPAN` and the rows of the reservation."""

from __future__ import annotations

REFUSAL = r"""
-- seconds until a sliding window has dropped enough of its oldest buckets for this call to fit; -1 for a
-- calendar window (the client knows its local end), -2 when it never will (the call alone is over the limit);
-- the calls in flight: 1 (a slot frees when a call ends, which no one can know)
local function retry_after(row, q)
  local s, a = row.s, row.a
  if s.kind == 'k' then return 1 end
  local size = SIZE[s.kind]
  if not size then return -1 end
  local need = (q == 1 and s.T or s.C) + row.amount[q] - row.limits[q] * row.refuse
  local names = {}
  local head = s.p .. (q == 1 and 't' or 'c')
  for x = s.lo, s.b - 1 do names[#names + 1] = head .. x end
  local per = #names > 0 and overlay(a, names, redis.call('HMGET', a.U, unpack(names))) or {}
  local freed = 0
  for x = s.lo, s.b do
    if x == s.b then freed = freed + (q == 1 and s.t or s.c) else freed = freed + (tonumber(per[x - s.lo + 1]) or 0) end
    if freed >= need then  -- bucket x leaves the window when bucket x + SPAN + 1 begins
      return (x + SPAN[s.kind] + 1) * size - now
    end
  end
  return -2
end

-- a refusal: the first limit crossed, with when the call would fit in every window that refuses it (the windows
-- after the first are judged too): {1, i, quota, used, amount, limit, seconds ('-1': none known, '-2': never),
-- {calendar i...}}
local function refusal(first, rows)
  local worst, calendar, never = -1, {}, false
  local function account(i, row, q)
    local r = retry_after(row, q)
    if r == -2 then never = true elseif r == -1 then calendar[#calendar + 1] = i
    elseif r > worst then worst = r end
  end
  local i0 = first[2]
  account(i0, rows[i0], first[3])
  for i = i0 + 1, #rows do
    local row = rows[i]
    local used = {row.s.T, row.s.C}
    for q = 1, 2 do
      local limit = row.limits[q]
      if row.refuse and limit and row.amount[q] > 0 and used[q] + row.amount[q] > limit * row.refuse then
        account(i, row, q)
      end
    end
  end
  first[7] = never and '-2' or string.format('%.3f', worst)
  first[8] = calendar
  return first
end
"""
