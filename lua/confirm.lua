--[[
  Payment succeeded: the order goes PENDING -> CONFIRMED, its reservation RESERVED -> CONFIRMED, the
  units move from reserved to sold and count toward the user's purchases.

  Input:
    KEYS[1] order                fs:{pN}:order:<order id>
    KEYS[2] partition stream     fs:{pN}:events
    KEYS[3] idempotency record   fs:{pN}:idem:confirm:<order id>:<user>:<key>   (unused when ARGV[4] is 0)
    ARGV[1] key prefix of the partition  fs:{pN}:
    ARGV[2] user id              the caller; must own the order
    ARGV[3] payment transaction id   0..128 characters
    ARGV[4] idempotency ttl ms   0 = no idempotency key
    ARGV[5] order id
  Output:
    the order as a flat field/value array (status CONFIRMED)
    a repeat with the same idempotency key (same user and order) returns the first answer, refusal included
    error INVALID_ARGUMENT  transaction id too long (nothing written)
    error NOT_FOUND         no such order (nothing written)
    error FORBIDDEN         the order is another user's (nothing written)
    error INVALID_STATE     the order is not PENDING, e.g. FAILED after the payment grace ran out
                            (nothing written)
  Event: confirmed (reserved -q, sold +q)
]]
--@include common
--@include events

local orderKey = KEYS[1]
local stream = KEYS[2]
local idemKey = KEYS[3]
local prefix = ARGV[1]
local user = ARGV[2]
local transactionId = ARGV[3]
local idemTtl = tonumber(ARGV[4])
local orderId = ARGV[5]

local earlier = storedAnswer(idemKey, idemTtl)
if earlier then return earlier end

if #transactionId > 128 then return refuse('INVALID_ARGUMENT', 'transaction id must be at most 128 characters') end
local o = rcall('HMGET', orderKey, 'user', 'status', 'reservation_id', 'sku', 'quantity')
if not o[1] then return refuse('NOT_FOUND', 'no order ' .. orderId) end
if o[1] ~= user then return refuse('FORBIDDEN', 'order ' .. orderId .. ' belongs to another user') end
if o[2] ~= 'PENDING' then
  return answer(idemKey, idemTtl, refuse('INVALID_STATE', 'order ' .. orderId .. ' is ' .. o[2]))
end

-- Checks done; writes follow.
local rid, sku, qty = o[3], o[4], tonumber(o[5])
local now = nowMs()
local skuKey = prefix .. 'sku:' .. sku
rcall('HINCRBY', skuKey, 'reserved', -qty)
rcall('HINCRBY', skuKey, 'sold', qty)
local userKey = prefix .. 'user:' .. sku .. ':' .. user
rcall('HINCRBY', userKey, 'held', -qty)
rcall('HINCRBY', userKey, 'purchased', qty)
rcall('ZREM', prefix .. 'holds:' .. sku, rid)
rcall('ZREM', prefix .. 'deadlines', rid)
local resKey = prefix .. 'res:' .. rid
rcall('HSET', resKey, 'status', 'CONFIRMED', 'ended_at', now)
rcall('HDEL', resKey, 'pay_until')
rcall('HSET', orderKey, 'status', 'CONFIRMED', 'transaction_id', transactionId, 'updated_at', now)
emit(stream, 'confirmed', sku, now, 0, -qty, qty, 0, {'order_id', orderId, 'reservation_id', rid,
  'user', user, 'quantity', qty, 'transaction_id', transactionId})
return answer(idemKey, idemTtl, entity(orderKey))
