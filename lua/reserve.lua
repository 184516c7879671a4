--[[
  Holds units of a SKU for one user until a deadline: the hot path of a flash sale.
  Checks, in order: sold out (no unit available and no hold of the SKU lapsed: answered first, and
  cheaply, since most calls of a sale end there, and it is the answer every API process may also give
  from memory), then the per-user limit's bound on quantity, the sale window, the per-user limit, the
  stock. A refusal for the limit or the stock first ends this SKU's holds whose deadline has passed (at
  most ARGV[5]) and judges again, so stock comes back even when no sweeper runs; a request that can
  succeed never looks.

  Input:
    KEYS[1] sku hash          fs:{pN}:sku:<sku>   counters, sale settings, h:<user> / b:<user> counts
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
    error OUT_OF_STOCK       sold out: fewer units available than asked for and no lapsed hold to end;
                             "sku <sku> has <n> units left; the first hold ends in <ms> ms" (relative to
                             now) or "...; none is held": api/soldout.py answers the same from memory on
                             that basis (nothing written)
    error SALE_NOT_ACTIVE    paused, not started or ended (nothing written)
    error ALREADY_RESERVED   the user's holds + purchases would pass the limit and they hold some now
    error ALREADY_PURCHASED  the user's purchases alone use up the limit
    error OUT_OF_STOCK       fewer units available than asked for
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

-- Sold out comes first, and before the includes below: most calls of a flash sale end here, and
-- defining the includes' functions costs more than this whole check (Redis runs a script's body on
-- every call). Lapsed holds would give units back, so a SKU is sold out only while its earliest hold's
-- deadline is ahead (the earlier head of its two indexes, lua/includes/holds.lua: an entry the list
-- still has of an ended hold can only make that sooner). The refusal says how far ahead: an API process
-- answers the same from memory until then, unless the SKU's stock channel says otherwise sooner
-- (api/soldout.py). Plain string compares
-- ('0', '1') rather than tonumber, whose strtod costs as much as a command. A keyed call looks for its
-- first answer before anything else (below), and any other quantity or stock takes the full checks.
local availableText
if (not ARGV[6] or ARGV[6] == '') and not ARGV[10] then
  availableText = redis.call('HGET', skuKey, 'available')
  if availableText == '0' and (ARGV[2] == '1' or string.find(ARGV[2], '^[1-9]%d?%d?%d?$')) then
    local sku = string.sub(skuKey, string.find(skuKey, '}:', 1, true) + 6)
    local firstEnds = redis.call('LINDEX', dueListKey, '0')
    firstEnds = firstEnds and tonumber(string.match(firstEnds, '^%d+'))
    local reindexed = redis.call('ZRANGE', holdsKey, '0', '0', 'WITHSCORES')[2]
    reindexed = reindexed and tonumber(reindexed)
    if reindexed and (not firstEnds or reindexed < firstEnds) then firstEnds = reindexed end
    if not firstEnds then
      return redis.error_reply('OUT_OF_STOCK sku ' .. sku .. ' has 0 units left; none is held')
    end
    local t = redis.call('TIME')
    firstEnds = firstEnds - (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
    if firstEnds > 0 then
      return redis.error_reply('OUT_OF_STOCK sku ' .. sku .. ' has 0 units left; the first hold ends in '
        .. string.format('%d', firstEnds) .. ' ms')
    end
  end
end

--@include common
--@include declared
--@include events

local user, rid = ARGV[1], ARGV[3]
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
local function lapsedOf(now, bound)
  --@include holds
  local lapsed, keys = lapsedHolds(prefix, sku, now, bound)
  if #lapsed == 0 and lapsed.popped == 0 then return nil end
  local refusal = needKeys(keys)
  if refusal then return nil, refusal end
  return function() return endLapsed(prefix, stream, sku, lapsed, now) end
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

-- Sold out, for the calls the check above left (a keyed call, another quantity, some units left).
local available = availableText or rcall('HGET', skuKey, 'available')
if not available then return refuse('NOT_FOUND', 'no sale for sku ' .. sku) end
available = tonumber(available)
now = now or nowMs()
if available < qty then
  local firstEnds = rcall('LINDEX', dueListKey, 0)
  firstEnds = firstEnds and tonumber(string.match(firstEnds, '^%d+'))
  local reindexed = rcall('ZRANGE', holdsKey, 0, 0, 'WITHSCORES')[2]
  reindexed = reindexed and tonumber(reindexed)
  if reindexed and (not firstEnds or reindexed < firstEnds) then firstEnds = reindexed end
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
local heldField, boughtField = 'h:' .. user, 'b:' .. user
local s = rcall('HMGET', skuKey, 'reserved', 'per_user_limit', 'starts_at', 'ends_at', 'paused', 'reservation_ttl_ms',
  heldField, boughtField, 'waiting_room')
local limit = tonumber(s[2])
if qty > limit then
  return answer(refuse('INVALID_QUANTITY', 'quantity ' .. qty .. ' is above the per-user limit ' .. limit))
end
local startsAt, endsAt = tonumber(s[3]), tonumber(s[4])
if s[5] == '1' or now < startsAt or (endsAt > 0 and now >= endsAt) then
  return answer(refuse('SALE_NOT_ACTIVE', 'the sale for sku ' .. sku .. ' is not open now'))
end
local reserved, ttl = tonumber(s[1]), tonumber(s[6])
local held, bought = tonumber(s[7] or 0), tonumber(s[8] or 0)
-- A refusal for the limit or the stock first ends lapsed holds (below); their keys are asked for here,
-- before the rate bucket is written.
local endLapsedHolds
if held + bought + qty > limit or available < qty then
  local refusal
  endLapsedHolds, refusal = lapsedOf(now, tonumber(ARGV[5]))
  if refusal then return refusal end
end
if rateKey then
  --@include ratelimit
  local wait = overRate(rateKey, now, tonumber(ARGV[8]), tonumber(ARGV[9]))
  if wait then return rateRefusal(wait) end
end
local admission
if s[9] == '1' then
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

-- Checks done; writes follow. Each number is turned into text once, as an integer (int: Lua's own
-- conversion, also redis.call's for a number argument, is sprintf's %.14g, dearer than the ZADD).
local expiresAt = int(now + ttl)
local qtyText, nowText = int(qty), int(now)
rcall('HSET', skuKey, 'available', int(available - qty), 'reserved', int(reserved + qty), heldField, int(held + qty))
-- The open record (lua/includes/reservations.lua): sku user quantity created_at expires_at order pay_until.
rcall('HSET', openHolds, rid, sku .. ' ' .. user .. ' ' .. qtyText .. ' ' .. nowText .. ' ' .. expiresAt .. ' - 0')
-- Indexed by deadline (lua/includes/holds.lua): appended to the list, unless that would put it before the
-- list's last deadline (the sale's TTL was shortened, the clock stepped back): then in the sorted set.
local last = rcall('LINDEX', dueListKey, -1)
if last and tonumber(string.match(last, '^%d+')) > now + ttl then
  rcall('ZADD', holdsKey, expiresAt, rid)
else
  rcall('RPUSH', dueListKey, expiresAt .. ' ' .. rid)
end
if admission and admission > 0 then rcall('ZADD', admittedKey, int(-admission), user) end
-- The event's id leaves out "rsv_<partition>_": the stream's partition says it (engine/events.py).
emit(stream, 'reserved', sku, nowText, ',"' .. string.sub(rid, string.find(rid, '_', 5, true) + 1) .. '","' .. user
  .. '",' .. qtyText .. ',' .. s[6])
return answer(rid .. ' ' .. qtyText .. ' ' .. nowText .. ' ' .. expiresAt)
