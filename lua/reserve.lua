--[[
  Holds units of a SKU for one user until a deadline: the hot path of a flash sale.
  Checks, in order: sold out (no unit available and no hold of the SKU lapsed: answered first, and
  cheaply, since most calls of a sale end there, and it is the answer every API process may also give
  from memory), then the per-user limit's bound on quantity, the sale window, the per-user limit, the
  stock. A refusal for the limit or the stock first ends this SKU's holds whose deadline has passed (at
  most ARGV[5]) and judges again, so stock comes back even when no sweeper runs; a request that can
  succeed never looks.
  Two paths, one answer: a call with no deposit that is sold out (a keyed one's refusal kept as the full
  checks keep it), or a call with no idempotency key and no deposit that passes every check, is answered
  by the fast path at the top, which defines none of the shared helpers (Redis runs a script's whole body
  on every call); every other call, and every other refusal, takes the full checks below it. Both grant
  through hold(), the one place a reservation is written.

  Input:
    KEYS[1] sku hash          fs:{pN}:sku:<sku>   counters, sale settings, h:<user> / b:<user> counts,
                              due_last (a deadline at or after the holds list's last entry's), due_first
                              (a deadline at or before every open hold's; lowered by each script that
                              indexes a hold earlier, kept by a sold-out refusal that read the indexes)
    KEYS[2] sku holds list    fs:{pN}:due:<sku>   "<deadline ms> <reservation id>" in the order holds were
                              made (lua/includes/holds.lua): a new hold is appended here
    KEYS[3] sku holds zset    fs:{pN}:holds:<sku>   reservation id -> deadline ms, for holds out of the
                              list's order (a new hold whose deadline would come before the list's last)
    KEYS[4] partition stream  fs:{pN}:events
    KEYS[5] open holds        fs:{pN}:open   the partition's open reservation records, one field each
                              (lua/includes/reservations.lua)
    KEYS[6] admitted          fs:{pN}:wr:a:<sku>   zset user -> admission deadline ms (negated once used):
                              read only when the sale has a waiting room (lua/includes/waiting_room.lua)
    KEYS[7] rate bucket       fs:{pN}:rl:<user>   (optional, with ARGV[8..9]) the user's request rate
    KEYS[7 or 8..] with an idempotency key: its answers' generations fs:{pN}:idem:<g> and idem:<g - 1>
                              (g = now // ttl by the client's clock); and any keys a NEEDS_KEYS reply named
    ARGV[1] user id
    ARGV[2] quantity          integer 1..per_user_limit
    ARGV[3] new reservation id
    ARGV[4] backlog limit     refuse when the partition's stream holds this many unapplied events
    ARGV[5] lazy expiry bound how many lapsed holds of this SKU a refusal ends before judging again
    ARGV[6] idempotency ttl ms      (optional, with ARGV[7]: the call is idempotent; '': it is not)
    ARGV[7] idempotency field       "reserve:<sku>:<user>:<key>"
    ARGV[8] rate interval ms        (optional, with ARGV[9] and KEYS[6]) lua/includes/ratelimit.lua
    ARGV[9] rate tolerance ms
    ARGV[10..14] (optional) a stock-bucket transfer to deposit first, in the same step: transfer id,
                            giving bucket, units, withdrawn at ms, deadline ms (lua/includes/transfers.lua;
                            its receipts hash fs:{pN}:moves:in among the KEYS). The deposit stays
                            whatever the answer; a refusal of the deposit itself (INVALID_ARGUMENT,
                            NOT_FOUND, TRANSFER_LATE) is the answer, nothing written
  Output:
    "<reservation id> <quantity> <created_at ms> <expires_at ms>" (status RESERVED)
    a repeat with the same idempotency field returns the first answer, refusal included
    error NEEDS_KEYS <key> ...   keys to read or write that are not in KEYS (nothing written, not
                             remembered): the idempotency generations of the server's clock, or the
                             records and orders of lapsed holds to end; sent again with them
    error INVALID_ARGUMENT | INVALID_QUANTITY   malformed input (nothing written)
    error NOT_FOUND          no sale for this SKU (nothing written)
    a negative integer -<ms>: sold out, on the fast path (no unit left, no lapsed hold to end, a call with
                             no idempotency key and no deposit), the SKU's first hold ending in <ms> ms
                             (nothing written but due_first); engine/models.py raises the OUT_OF_STOCK below
                             for it, "sku <sku> has 0 units left; the first hold ends in <ms> ms"
    error OUT_OF_STOCK       sold out on the full checks: fewer units available than asked for and no lapsed
                             hold to end; "sku <sku> has <n> units left; the first hold ends in <ms> ms"
                             (relative to now) or "...; none is held": api/soldout.py answers the same from
                             memory on that basis (nothing written)
    error SALE_NOT_ACTIVE    paused, not started or ended (nothing written)
    error ALREADY_RESERVED   the user's holds + purchases would pass the limit and they hold some now
    error ALREADY_PURCHASED  the user's purchases alone use up the limit
    error OUT_OF_STOCK       fewer units available than asked for
    error OUT_OF_STOCK       "...; other requests are ending its lapsed holds now, try again": sent again with
                             the keys of the lapsed holds it asked for, it found every one of them ended by
                             other requests meanwhile (a herd as many holds lapse together); not remembered
    error BACKLOG_FULL       the write-behind backlog of this partition is at its budget (nothing written)
    error RATE_LIMITED       over the user's request rate (nothing written but the bucket; not remembered)
    error NOT_ADMITTED       the sale has a waiting room and the user holds no live admission (nothing
                             written; not remembered: the same key may succeed once admitted)
    (a limit or stock refusal may first have ended lapsed holds, each with its own event)
  Event: ["reserved", sku, at, reservation id less "rsv_<partition>_", user, quantity, ttl ms]   (expires
         at = at + ttl); with a
         deposit, "transferred_in" before it
  Publishes: the SKU id on fs:{pN}:stock when ending lapsed holds gives units back (includes/stock.lua)
  A waiting-room admission used by this reservation is marked used (its score negated): it lasts until
  its deadline all the same, and the admitter counts it as used rather than abandoned.
]]
local skuKey, dueListKey, holdsKey, stream, openHolds = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local admittedKey = KEYS[6]
local rateKey = ARGV[8] and ARGV[8] ~= '' and KEYS[7]
local user, rid = ARGV[1] or '', ARGV[3]
local fmt = string.format
--@include first_deadline

-- The fast path: a call with no deposit that finds the SKU sold out, or a call with no idempotency key and
-- no deposit that passes every check, is answered here, before the includes below: most calls of a flash
-- sale take it, and defining the includes' functions, which Redis does on every call (it runs a script's
-- whole body), costs more than a check. Anything else (a refusal other than sold out or the user's rate,
-- a waiting room, bad input, a keyed call's repeat) goes on to the full checks, which judge the call from
-- the start; nothing is written before but due_first.
local fast = (not ARGV[6] or ARGV[6] == '') and not ARGV[10]
local availableText, canonical
if not ARGV[10] then
  -- Two fields first, and before anything is defined: a sold-out refusal needs no more.
  local head = redis.call('HMGET', skuKey, 'available', 'due_first')
  availableText = head[1]
  canonical = ARGV[2] == '1' or string.find(ARGV[2], '^[1-9]%d?%d?%d?$')
  -- Sold out: lapsed holds would give units back, so a SKU is sold out only while its earliest hold's
  -- deadline is ahead. due_first is a deadline at or before every open hold's (each script that indexes a
  -- hold at an earlier one lowers it); when it has passed, or is not there, the earlier head of the two
  -- indexes (lua/includes/holds.lua: an entry the list still has of an ended hold can only make that
  -- sooner) is read and, when ahead, kept as due_first for the next refusal. The refusal says how far
  -- ahead: an API process answers the same from memory until then, unless the SKU's stock channel says
  -- otherwise sooner (api/soldout.py). Plain string compares ('0', '1') rather than tonumber, whose strtod
  -- costs as much as a command.
  if availableText == '0' and canonical then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local firstEnds = tonumber(head[2])
    if not firstEnds or firstEnds <= now then
      firstEnds = indexedFirstDeadline(dueListKey, holdsKey)
      if firstEnds and firstEnds > now then redis.call('HSET', skuKey, 'due_first', fmt('%d', firstEnds)) end
    end
    if fast then
      if not firstEnds then
        local sku = string.sub(skuKey, string.find(skuKey, '}:', 1, true) + 6)
        return redis.error_reply('OUT_OF_STOCK sku ' .. sku .. ' has 0 units left; none is held')
      end
      -- The common answer is a number, not an error reply: an error's text costs more to build (the
      -- SKU's id, the figures) and to count than the whole refusal's checks. engine/models.py turns it
      -- into the OUT_OF_STOCK the full checks give.
      if firstEnds > now then return now - firstEnds end
    elseif not firstEnds or firstEnds > now then
      -- A keyed call (the storefront keys every press): its first answer is kept, so this refusal is
      -- remembered exactly as the full checks would (lua/includes/idempotency.lua: the same generations,
      -- field and text), unless the key has an answer already or the client named other generations
      -- (then the full checks give the answer, or ask for the keys).
      local ttl = tonumber(ARGV[6])
      if ttl and ttl > 0 then
        local generation = math.floor(now / ttl)
        local prefix = string.sub(skuKey, 1, string.find(skuKey, '}:', 1, true) + 1)
        local current, previous, n = prefix .. 'idem:' .. generation, prefix .. 'idem:' .. (generation - 1), #KEYS
        if KEYS[n - 1] == current and KEYS[n] == previous and not redis.call('HGET', current, ARGV[7])
            and not redis.call('HGET', previous, ARGV[7]) then
          local message = 'OUT_OF_STOCK sku ' .. string.sub(skuKey, #prefix + 5) .. ' has 0 units left; '
            .. (firstEnds and 'the first hold ends in ' .. (firstEnds - now) .. ' ms' or 'none is held')
          redis.call('HSET', current, ARGV[7], '!' .. message)
          redis.call('PEXPIREAT', current, (generation + 2) * ttl)
          return redis.error_reply(message)
        end
      end
    end
  end
end

local heldField, boughtField = 'h:' .. user, 'b:' .. user

-- Everything the checks read, in one HMGET (a redis.call costs about as much as a cheap command beyond
-- its own work; the fast path reads 'available' and 'due_first' first): the counters, the sale's
-- settings, this user's counts, due_last, a deadline at or after the holds list's last entry's (written
-- with every append below; a hash from before it was kept has the list's last entry read instead), and
-- due_first.
local function readSku()
  return redis.call('HMGET', skuKey, 'available', 'reserved', 'per_user_limit', 'starts_at', 'ends_at', 'paused',
    'reservation_ttl_ms', heldField, boughtField, 'waiting_room', 'due_last', 'due_first')
end

-- The writes of a granted reservation (s: readSku's reply, the counters as numbers, now: the clock in ms),
-- returning its answer. Each number is turned into text once, as an integer (Lua's own conversion is
-- %.14g, and dearer).
local function hold(sku, s, qty, now, available, reserved, held, admission)
  --@include new_hold
  local expiresAt = now + tonumber(s[7])
  local expiresText, qtyText, nowText = fmt('%d', expiresAt), fmt('%d', qty), fmt('%d', now)
  -- Indexed by deadline (lua/includes/holds.lua): appended to the list, unless that would put it before
  -- the list's last deadline (the sale's TTL was shortened, the clock stepped back): then in the sorted set.
  local last = tonumber(s[11])
  if not last then
    last = redis.call('LINDEX', dueListKey, -1)
    last = last and tonumber(string.match(last, '^%d+'))
  end
  if last and last > expiresAt then
    redis.call('HSET', skuKey, 'available', fmt('%d', available - qty), 'reserved', fmt('%d', reserved + qty), heldField,
      fmt('%d', held + qty))
    redis.call('ZADD', holdsKey, expiresText, rid)
  else
    redis.call('HSET', skuKey, 'available', fmt('%d', available - qty), 'reserved', fmt('%d', reserved + qty), heldField,
      fmt('%d', held + qty), 'due_last', expiresText)
    redis.call('RPUSH', dueListKey, expiresText .. ' ' .. rid)
  end
  -- A deadline before due_first (the sale's TTL was shortened) lowers it: a sold-out refusal trusts it.
  local first = tonumber(s[12])
  if first and first > expiresAt then redis.call('HSET', skuKey, 'due_first', expiresText) end
  -- The open record and the event (lua/includes/new_hold.lua).
  redis.call('HSET', openHolds, rid, openHoldRecord(sku, user, qtyText, nowText, expiresText))
  if admission and admission > 0 then redis.call('ZADD', admittedKey, fmt('%d', -admission), user) end
  redis.call('XADD', stream, '*', 'e', reservedEvent(sku, nowText, rid, user, qtyText, s[7]))
  return rid .. ' ' .. qtyText .. ' ' .. nowText .. ' ' .. expiresText
end

--@include bounds
--@include ratelimit

-- The fast path's grant: every check passes (else the full checks below judge the call).
local s
if fast and availableText and availableText ~= '0' and canonical and #user <= MAX_IDENTIFIER_CHARS
    and string.match(user, '^[%w%-_%.@]+$') then
  s = readSku()
  local qty, available = tonumber(ARGV[2]), tonumber(s[1])
  local held, bought = tonumber(s[8] or 0), tonumber(s[9] or 0)
  if available >= qty and held + bought + qty <= tonumber(s[3]) and s[6] ~= '1' and s[10] ~= '1' then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local endsAt = tonumber(s[5])
    if now >= tonumber(s[4]) and (endsAt == 0 or now < endsAt) and redis.call('XLEN', stream) < tonumber(ARGV[4]) then
      if rateKey then
        local wait = overRate(rateKey, now, tonumber(ARGV[8]), tonumber(ARGV[9]))
        if wait then return rateRefusal(wait) end
      end
      return hold(string.sub(skuKey, string.find(skuKey, '}:', 1, true) + 6), s, qty, now, available,
        tonumber(s[2]), held)
    end
  end
end

--@include common
--@include declared
--@include events

local idemField = ARGV[7]
local prefix, sku = skuKeyParts(skuKey)

-- Units moved here from another stock bucket by this shopper's request (engine/buckets.py): deposited in
-- this step, before anyone else's call can take them.
if ARGV[10] then
  --@include transfers
  local receipts = prefix .. 'moves:in'
  local refusal = needKeys({receipts})
  if refusal then return refusal end
  local deposited = depositTransfer(skuKey, stream, receipts, ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14])
  if type(deposited) == 'table' then return deposited end
end

-- The helpers of the rarer paths are defined only when a call takes them: Redis runs a script's whole
-- body on every call, and each Lua function it defines costs about as much as a HGET (README, Performance).
-- This SKU's lapsed holds: nil when none, else a function that ends them; or the NEEDS_KEYS reply for the
-- keys ending them writes (their records, their orders), asked before the first write.
-- The third value: how many of them have lapsed (the others are index entries of holds that ended or moved).
-- The fourth value, with a NEEDS_KEYS reply: whether this call was sent again with the keys of lapsed holds
-- it asked for, and every one of those it needs now is another (other requests ended the first ones
-- meanwhile: a herd at the moment many holds lapse together).
local function lapsedOf(now, bound)
  --@include holds
  local lapsed, keys = lapsedHolds(prefix, sku, now, bound)
  if #lapsed == 0 and lapsed.popped == 0 then return nil, nil, 0 end
  local refusal = needKeys(keys)
  if refusal then
    local raced = false
    for i = 1, #KEYS do
      if string.sub(KEYS[i], 1, #prefix + 2) == prefix .. 'r:' then raced = true end
    end
    for i = 5, #keys do  -- past the SKU's own four (lua/includes/holds.lua), always declared
      if raced and declared(keys[i]) then raced = false end
    end
    return nil, refusal, nil, raced
  end
  return function() return endLapsed(prefix, stream, sku, lapsed, now) end, nil, lapsed.ending
end

local now
local answer = function(reply) return reply end
if ARGV[6] and ARGV[6] ~= '' then
  --@include idempotency
  local idemTtl = tonumber(ARGV[6])
  now = nowMs()
  local current, previous = answerKeys(prefix, idemTtl, now)
  local refusal = needAnswerKeys(current, previous)
  if refusal then return refusal end
  local earlier = storedAnswer(current, previous, idemField)
  if earlier then return earlier end
  answer = function(reply) return remember(prefix, idemField, idemTtl, now, reply) end
end

local qty = parseCount(ARGV[2], MAX_PER_USER_LIMIT)
if qty == nil or qty < 1 then
  return refuse('INVALID_QUANTITY', 'quantity must be an integer from 1 to ' .. MAX_PER_USER_LIMIT)
end

-- Sold out, for the calls the fast path left (a keyed call, a deposit, another quantity, some units left):
-- these read the SKU here, after the deposit and after a keyed call's first answer was looked for.
s = s or readSku()
if not s[1] then return refuse('NOT_FOUND', 'no sale for sku ' .. sku) end
local available = tonumber(s[1])
now = now or nowMs()
if available < qty then
  local firstEnds = indexedFirstDeadline(dueListKey, holdsKey)
  if not firstEnds then
    return answer(refuse('OUT_OF_STOCK', 'sku ' .. sku .. ' has ' .. available .. ' units left; none is held'))
  end
  firstEnds = firstEnds - now
  if firstEnds > 0 then
    return answer(refuse('OUT_OF_STOCK', 'sku ' .. sku .. ' has ' .. available .. ' units left; the first hold ends in '
      .. firstEnds .. ' ms'))
  end
end

if not isIdentifier(user) then return refuse('INVALID_ARGUMENT', 'user id must be 1-128 letters, digits or -_.@') end
-- A refusal for the limit or the stock first ends lapsed holds (below); their keys are asked for before the
-- rate bucket is written. Short of stock, the first deadline has passed (above), but its index entry may be
-- of a hold that ended or moved: sold out still comes first, before the other checks, unless a hold did
-- lapse, so they are looked for here (entries of ended holds dropped on the way).
local endLapsedHolds
if available < qty then
  local refusal, ending, raced
  endLapsedHolds, refusal, ending, raced = lapsedOf(now, tonumber(ARGV[5]))
  if raced then
    -- Asking again would race the same herd again, send after send, each round ending one bound's worth
    -- of holds for the few requests first in line. The units they gave back went to those requests; this
    -- one is refused for now, not remembered, in words the API's sold-out flag does not take (its next
    -- press, or the sweeper, ends the rest).
    return refuse('OUT_OF_STOCK', 'sku ' .. sku .. ' has ' .. available
      .. ' units left; other requests are ending its lapsed holds now, try again')
  end
  if refusal then return refusal end
  if ending == 0 then
    if endLapsedHolds then endLapsedHolds() end
    return answer(refuse('OUT_OF_STOCK', 'sku ' .. sku .. ' has ' .. available .. ' units left'))
  end
end
local limit = tonumber(s[3])
if qty > limit then
  return answer(refuse('INVALID_QUANTITY', 'quantity ' .. qty .. ' is above the per-user limit ' .. limit))
end
local startsAt, endsAt = tonumber(s[4]), tonumber(s[5])
if s[6] == '1' or now < startsAt or (endsAt > 0 and now >= endsAt) then
  return answer(refuse('SALE_NOT_ACTIVE', 'the sale for sku ' .. sku .. ' is not open now'))
end
local reserved = tonumber(s[2])
local held, bought = tonumber(s[8] or 0), tonumber(s[9] or 0)
if not endLapsedHolds and held + bought + qty > limit then
  local refusal
  endLapsedHolds, refusal = lapsedOf(now, tonumber(ARGV[5]))
  if refusal then return refusal end
end
if rateKey then
  local wait = overRate(rateKey, now, tonumber(ARGV[8]), tonumber(ARGV[9]))
  if wait then return rateRefusal(wait) end
end
local admission
if s[10] == '1' then
  admission = tonumber(rcall('ZSCORE', admittedKey, user) or 0)
  if not (admission > now or -admission > now) then
    return refuse('NOT_ADMITTED', 'the sale of sku ' .. sku .. ' has a waiting room: join the line, reserve once admitted'
      .. (admission > 0 and ' (your admission lapsed)' or ''))
  end
end

if endLapsedHolds and endLapsedHolds() > 0 then
  -- Lapsed holds ended: judge again on what they gave back.
  local again = rcall('HMGET', skuKey, 'available', 'reserved', heldField)
  available, reserved, held = tonumber(again[1]), tonumber(again[2]), tonumber(again[3] or 0)
end
if held + bought + qty > limit then
  if held > 0 then
    return answer(refuse('ALREADY_RESERVED', 'user already holds ' .. held .. ' of sku ' .. sku))
  end
  return answer(refuse('ALREADY_PURCHASED', 'user already bought ' .. bought .. ' of sku ' .. sku))
end
if available < qty then
  return answer(refuse('OUT_OF_STOCK', 'sku ' .. sku .. ' has ' .. available .. ' units left'))
end
if rcall('XLEN', stream) >= tonumber(ARGV[4]) then
  return refuse('BACKLOG_FULL', 'the write-behind backlog of this partition is full; try again later')
end
return answer(hold(sku, s, qty, now, available, reserved, held, admission))
