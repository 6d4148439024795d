"""The part of the reservation script that explains a refusal: when the call would fit again (Retry-After), in
every window that refuses it, not only the first (a caller sent back after the minute must not walk into a day
that is also over). Uses the prelude's `load`, `now`, `SIZE`, `SPAN`."""

from __future__ import annotations

REFUSAL = r"""
-- seconds until a sliding window has dropped enough of its oldest buckets for this call to fit; -1 for a
-- calendar window (the client knows its local end), -2 when it never will (the call alone is over the limit);
-- the calls in flight: 1 (a slot frees when a call ends, which no one can know)
local function retry_after(row, q)
  local s = row.s
  if s.kind == 'k' then return 1 end
  local size = SIZE[s.kind]
  if not size then return -1 end
  local need = row.used[q] + row.amount[q] - row.limits[q] * row.refuse
  local fields = redis.call('HGETALL', row.U)
  local per = {}
  for i = 1, #fields, 2 do per[fields[i]] = tonumber(fields[i + 1]) end
  local head = q == 1 and 't' or 'c'
  local freed = 0
  for x = s.lo, s.b do
    if x == s.b then freed = freed + (q == 1 and s.t or s.c) else freed = freed + (per[head .. x] or 0) end
    if freed >= need then  -- bucket x leaves the window when bucket x + SPAN + 1 begins
      return (x + SPAN[s.kind] + 1) * size - now
    end
  end
  return -2
end

-- a refusal: the first limit crossed, with when the call would fit in every window that refuses it (the
-- principals and windows after the first are judged too: Retry-After must not send the caller back into a day
-- that is also over): {1, i, quota, used, amount, limit, seconds ('-1': none known, '-2': never), {calendar i...}}
local function refusal(first, i0, row0, n, charges)
  local worst, calendar, never = -1, {}, false
  local function account(i, row, q)
    local r = retry_after(row, q)
    if r == -2 then never = true elseif r == -1 then calendar[#calendar + 1] = i
    elseif r > worst then worst = r end
  end
  account(i0, row0, first[3])
  for i = i0 + 1, n do
    local c, U, G = charges[i], KEYS[i * 2 - 1], KEYS[i * 2]
    local s = load(U, G, c[1], c[2])
    local row = {U = U, G = G, s = s, used = {s.T, s.C}, amount = {tonumber(c[3]), tonumber(c[4])},
                 limits = {tonumber(c[5]), tonumber(c[6])}, refuse = tonumber(c[7]), downgrade = nil}
    for q = 1, 2 do
      local limit = row.limits[q]
      if row.refuse and limit and row.amount[q] > 0 and row.used[q] + row.amount[q] > limit * row.refuse then
        account(i, row, q)
      end
    end
  end
  first[7] = never and '-2' or string.format('%.3f', worst)
  first[8] = calendar
  return first
end
"""
