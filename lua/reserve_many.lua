--[[
  Holds units of one SKU for several shoppers in one step: the reserves without an idempotency key or a
  deposit that one client process has for this SKU at the same moment, coalesced by engine/coalescing.py
  (those held to the users' shared request rate in one call, the others in another). Each is judged in
  turn, as if reserve.lua had run for each in that order, by reserve.lua's fast path only: a grant (every
  check passes), a sold-out refusal, or (held to a rate) a refusal for the rate. Anything else is not
  judged here: the item's answer is 0 and the client sends it through reserve.lua, whose full checks give
  its answer (the limit's and stock's refusals after ending lapsed holds, a waiting room, the sale not
  open, bad input, a full backlog). One call pays once for what each reserve.lua call pays again: the
  call, the SKU's settings, the clock, the backlog's length, and one write each to the SKU hash, its
  holds list and the open hash however many it grants (README, Performance).

  Input:
    KEYS[1] sku hash          fs:{pN}:sku:<sku>   (reserve.lua's KEYS[1]: counters, settings, h:<user>,
                              b:<user>, due_last, due_first)
    KEYS[2] sku holds list    fs:{pN}:due:<sku>   every grant is appended here, in order
    KEYS[3] sku holds zset    fs:{pN}:holds:<sku>   read only to find the first deadline when due_first
                              has passed (lua/includes/holds.lua)
    KEYS[4] partition stream  fs:{pN}:events
    KEYS[5] open holds        fs:{pN}:open
    KEYS[6..]                 with a rate (ARGV[2] > 0): item i's rate bucket fs:{pN}:rl:<user> is KEYS[5 + i]
    ARGV[1] backlog limit     grants stop (0, reserve.lua refuses) at this many unapplied events
    ARGV[2] rate interval ms  '0': no rate; else every item's user is held to it (lua/includes/ratelimit.lua),
    ARGV[3] rate tolerance ms as reserve.lua holds one: checked when the item would be granted
    ARGV[4 + 3i], ARGV[5 + 3i], ARGV[6 + 3i]  (i = 0, 1, ...) an item: user id, quantity, new reservation id
  Output:
    an array, one answer per item, in order:
      "<reservation id> <quantity> <created_at ms> <expires_at ms>"   granted (status RESERVED)
      a negative integer -<ms>   sold out (reserve.lua's fast refusal: no unit left, the SKU's first hold
                                 ending in <ms> ms); engine/models.py raises OUT_OF_STOCK for it
      error OUT_OF_STOCK ...     sold out with no hold open ("...; none is held"), as reserve.lua says it
      error RATE_LIMITED ...     over the user's request rate (nothing written for it), as reserve.lua says it
      0                          not judged here: nothing written for it; send it through reserve.lua
  Errors: none of its own (every refusal is an item's answer); a malformed call (ARGV not triples, a rate
    without its keys) is a Lua error, nothing written.
  Event: one "reserved" event per grant, in the items' order, as reserve.lua writes it (includes/new_hold.lua)
  Writes nothing but due_first (as reserve.lua's sold-out refusal does) unless it grants (a grant held to a
  rate spends its user's rate bucket too).
]]
--@include bounds
--@include first_deadline
--@include new_hold
--@include ratelimit

local skuKey, dueListKey, holdsKey, stream, openHolds = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local fmt = string.format
local FIRST = 4  -- the first item's ARGV
local count = (#ARGV - FIRST + 1) / 3
local interval, tolerance = tonumber(ARGV[2]) or 0, tonumber(ARGV[3]) or 0
if count < 1 or count % 1 ~= 0 or (interval > 0 and #KEYS ~= 5 + count) then
  error('reserve_many takes the backlog limit, the rate and (user, quantity, id) triples, with a rate key each')
end

-- Everything the checks read, in one HMGET: the counters and settings, then each item's user counts.
local fields = {'available', 'reserved', 'per_user_limit', 'starts_at', 'ends_at', 'paused', 'reservation_ttl_ms',
  'waiting_room', 'due_last', 'due_first'}
local FIXED = #fields
for i = 1, count do
  local user = ARGV[FIRST + 3 * i - 3]
  fields[FIXED + 2 * i - 1], fields[FIXED + 2 * i] = 'h:' .. user, 'b:' .. user
end
local s = redis.call('HMGET', skuKey, unpack(fields))
local answers = {}
if not s[1] then
  for i = 1, count do answers[i] = 0 end  -- no sale: reserve.lua says NOT_FOUND
  return answers
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local available, reserved, limit = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
local endsAt, ttlText = tonumber(s[5]), s[7]
local expiresAt = now + tonumber(ttlText)
local expiresText, nowText = fmt('%d', expiresAt), fmt('%d', now)
local sku = string.sub(skuKey, string.find(skuKey, '}:', 1, true) + 6)

-- Grants are possible only while the sale is open with no waiting room, and only when a new hold's
-- deadline is not before the holds list's last (reserve.lua then indexes it in the sorted set instead).
local last = tonumber(s[9])
if not last then
  last = redis.call('LINDEX', dueListKey, -1)
  last = last and tonumber(string.match(last, '^%d+'))
end
local open = s[6] ~= '1' and s[8] ~= '1' and now >= tonumber(s[4]) and (endsAt == 0 or now < endsAt)
  and not (last and last > expiresAt)
local room = open and tonumber(ARGV[1]) - redis.call('XLEN', stream) or 0

local counts, entries, records, held = {}, {}, {}, {}

-- The first hold's deadline, for sold-out answers: read once, as reserve.lua's fast path reads it (and kept
-- as due_first when read from the indexes), then this call's own grants, which are not in the list yet.
local dueFirst = tonumber(s[10])
local firstEnds, firstRead
local function firstDeadline()
  if not firstRead then
    firstRead = true
    firstEnds = dueFirst
    if not firstEnds or firstEnds <= now then
      firstEnds = indexedFirstDeadline(dueListKey, holdsKey)
      if firstEnds and firstEnds > now then
        redis.call('HSET', skuKey, 'due_first', fmt('%d', firstEnds))
        dueFirst = firstEnds
      end
    end
  end
  if #entries > 0 and not firstEnds then return expiresAt end
  return firstEnds
end

for i = 1, count do
  local user, qtyText, rid = ARGV[FIRST + 3 * i - 3], ARGV[FIRST + 3 * i - 2], ARGV[FIRST + 3 * i - 1]
  local answer = 0
  if string.find(qtyText, '^[1-9]%d?%d?%d?$') then
    local qty = tonumber(qtyText)
    if available == 0 then
      local first = firstDeadline()
      if not first then
        answer = redis.error_reply('OUT_OF_STOCK sku ' .. sku .. ' has 0 units left; none is held')
      elseif first > now then
        answer = now - first
      end  -- else a hold has lapsed: reserve.lua ends it and judges again
    elseif open and available >= qty and room > #entries and #user <= MAX_IDENTIFIER_CHARS
        and string.match(user, '^[%w%-_%.@]+$') then
      local heldField = fields[FIXED + 2 * i - 1]
      local userHeld = held[heldField] or tonumber(s[FIXED + 2 * i - 1] or 0)
      local fits = userHeld + tonumber(s[FIXED + 2 * i] or 0) + qty <= limit
      -- The user's rate, as reserve.lua's fast path checks it: last, and spent only by a grant.
      local wait = fits and interval > 0 and overRate(KEYS[5 + i], now, interval, tolerance)
      if wait then
        answer = rateRefusal(wait)
      elseif fits then
        available, reserved, held[heldField] = available - qty, reserved + qty, userHeld + qty
        counts[#counts + 1] = heldField
        counts[#counts + 1] = fmt('%d', userHeld + qty)
        entries[#entries + 1] = expiresText .. ' ' .. rid
        records[#records + 1] = rid
        records[#records + 1] = openHoldRecord(sku, user, qtyText, nowText, expiresText)
        redis.call('XADD', stream, '*', 'e', reservedEvent(sku, nowText, rid, user, qtyText, ttlText))
        answer = rid .. ' ' .. qtyText .. ' ' .. nowText .. ' ' .. expiresText
      end
    end
  end
  answers[i] = answer
end

if #entries > 0 then
  -- A user's count written once, at its last value (a user twice in one call: the later pair wins).
  -- due_first: lowered to these holds' deadline when it was later (reserve.lua's hold() does the same), or
  -- set to it when a sold-out answer found no other hold in the indexes (a lapsed one keeps it unset).
  if (dueFirst and dueFirst > expiresAt) or (firstRead and not firstEnds) then
    counts[#counts + 1], counts[#counts + 2] = 'due_first', expiresText
  end
  redis.call('HSET', skuKey, 'available', fmt('%d', available), 'reserved', fmt('%d', reserved), 'due_last',
    expiresText, unpack(counts))
  redis.call('RPUSH', dueListKey, unpack(entries))
  redis.call('HSET', openHolds, unpack(records))
end
return answers
