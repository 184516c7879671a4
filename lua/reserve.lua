--[[
  Holds units of a SKU for one user until a deadline: the hot path of a flash sale.
  First ends this SKU's holds whose deadline has passed (at most ARGV[7] of them), so stock comes back
  even when no sweeper runs; then checks, in order: the sale window, the per-user limit, the stock.

  Input:
    KEYS[1] sku hash             fs:{pN}:sku:<sku>
    KEYS[2] sku holds            fs:{pN}:holds:<sku>     zset reservation id -> deadline ms
    KEYS[3] partition deadlines  fs:{pN}:deadlines       zset reservation id -> deadline ms
    KEYS[4] partition stream     fs:{pN}:events
    KEYS[5] user's counts        fs:{pN}:user:<sku>:<user>   hash held, purchased
    KEYS[6] new reservation      fs:{pN}:res:<reservation id>
    KEYS[7] idempotency record   fs:{pN}:idem:reserve:<sku>:<user>:<key>   (unused when ARGV[5] is 0)
    ARGV[1] key prefix of the partition  fs:{pN}:
    ARGV[2] user id
    ARGV[3] quantity             integer 1..1,000,000
    ARGV[4] new reservation id
    ARGV[5] idempotency ttl ms   0 = no idempotency key
    ARGV[6] sku id
    ARGV[7] lazy expiry bound    how many due holds of this SKU to end first
  Output:
    the reservation as a flat field/value array (id, sku, user, quantity, status, created_at, expires_at)
    a repeat with the same idempotency key (same user and SKU) returns the first answer, refusal included
    error INVALID_ARGUMENT | INVALID_QUANTITY   malformed input (nothing written)
    error NOT_FOUND          no sale for this SKU (nothing written)
    error SALE_NOT_ACTIVE    paused, not started or ended (nothing written)
    error ALREADY_RESERVED   the user's holds + purchases would pass the limit and they hold some now
    error ALREADY_PURCHASED  the user's purchases alone use up the limit
    error OUT_OF_STOCK       fewer units available than asked for
    (after the window check only due holds may have been ended, each with its own event)
  Event: reserved (available -q, reserved +q)
]]
--@include common
--@include events
--@include holds

local skuKey = KEYS[1]
local holdsKey = KEYS[2]
local deadlinesKey = KEYS[3]
local stream = KEYS[4]
local userKey = KEYS[5]
local resKey = KEYS[6]
local idemKey = KEYS[7]
local prefix = ARGV[1]
local user = ARGV[2]
local rid = ARGV[4]
local idemTtl = tonumber(ARGV[5])
local sku = ARGV[6]
local expiryBound = tonumber(ARGV[7])

local earlier = storedAnswer(idemKey, idemTtl)
if earlier then return earlier end

if not isIdentifier(user) then return refuse('INVALID_ARGUMENT', 'user id must be 1-128 letters, digits or -_.@') end
local qty = parseCount(ARGV[3], 1000000)
if qty == nil or qty < 1 then
  return refuse('INVALID_QUANTITY', 'quantity must be an integer from 1 to 1000000')
end

local sale = rcall('HMGET', skuKey, 'available', 'per_user_limit', 'starts_at', 'ends_at', 'paused',
  'reservation_ttl_ms')
if not sale[1] then return refuse('NOT_FOUND', 'no sale for sku ' .. sku) end
local limit = tonumber(sale[2])
if qty > limit then
  return answer(idemKey, idemTtl, refuse('INVALID_QUANTITY', 'quantity ' .. qty .. ' is above the per-user limit ' .. limit))
end

local now = nowMs()
local startsAt, endsAt = tonumber(sale[3]), tonumber(sale[4])
if sale[5] == '1' or now < startsAt or (endsAt > 0 and now >= endsAt) then
  return answer(idemKey, idemTtl, refuse('SALE_NOT_ACTIVE', 'the sale for sku ' .. sku .. ' is not open now'))
end

-- Stock whose hold has lapsed is available again before this request is judged.
local available = tonumber(sale[1])
if expireDue(prefix, stream, holdsKey, now, expiryBound) > 0 then
  available = tonumber(rcall('HGET', skuKey, 'available'))
end

local counts = rcall('HMGET', userKey, 'held', 'purchased')
local held, purchased = tonumber(counts[1] or 0), tonumber(counts[2] or 0)
if held + purchased + qty > limit then
  if held > 0 then
    return answer(idemKey, idemTtl, refuse('ALREADY_RESERVED', 'user already holds ' .. held .. ' of sku ' .. sku))
  end
  return answer(idemKey, idemTtl, refuse('ALREADY_PURCHASED', 'user already bought ' .. purchased .. ' of sku ' .. sku))
end
if available < qty then
  return answer(idemKey, idemTtl, refuse('OUT_OF_STOCK', 'sku ' .. sku .. ' has ' .. available .. ' units left'))
end

-- Checks done; writes follow.
local expiresAt = now + tonumber(sale[6])
rcall('HINCRBY', skuKey, 'available', -qty)
rcall('HINCRBY', skuKey, 'reserved', qty)
rcall('HINCRBY', userKey, 'held', qty)
local reservation = {'id', rid, 'sku', sku, 'user', user, 'quantity', qty, 'status', 'RESERVED',
  'created_at', now, 'expires_at', expiresAt}
rcall('HSET', resKey, unpack(reservation))
rcall('ZADD', holdsKey, expiresAt, rid)
rcall('ZADD', deadlinesKey, expiresAt, rid)
emit(stream, 'reserved', sku, now, -qty, qty, 0, 0,
  {'reservation_id', rid, 'user', user, 'quantity', qty, 'expires_at', expiresAt})
return answer(idemKey, idemTtl, reservation)
