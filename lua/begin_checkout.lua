--[[
  Starts paying for a reservation: creates its order as PENDING and marks the reservation as being paid
  for, so a second checkout of it is refused (no double charge) and the sweeper leaves it alone until
  the payment grace period ends. The hold's units stay reserved.

  Input:
    KEYS[1] reservation          fs:{pN}:res:<reservation id>
    KEYS[2] partition stream     fs:{pN}:events
    KEYS[3] partition deadlines  fs:{pN}:deadlines
    KEYS[4] new order            fs:{pN}:order:<order id>
    KEYS[5] idempotency record   fs:{pN}:idem:checkout:<reservation id>:<user>:<key>   (unused when ARGV[5] is 0)
    ARGV[1] key prefix of the partition  fs:{pN}:
    ARGV[2] user id              the caller; must own the reservation
    ARGV[3] new order id
    ARGV[4] payment method       1..64 characters
    ARGV[5] idempotency ttl ms   0 = no idempotency key
    ARGV[6] payment grace ms     how long the hold is kept for a payment in flight
    ARGV[7] reservation id
  Output:
    the order as a flat field/value array (status PENDING)
    a repeat with the same idempotency key (same user and reservation) returns the first answer, refusal included
    error INVALID_ARGUMENT     malformed payment method (nothing written)
    error NOT_FOUND            no such reservation (nothing written)
    error FORBIDDEN            the reservation is another user's (nothing written)
    error CHECKOUT_IN_PROGRESS a checkout of this reservation is already paying (nothing written)
    error INVALID_STATE        the reservation is CONFIRMED or CANCELLED (nothing written)
    error RESERVATION_EXPIRED  its deadline has passed; if the sweeper had not ended it yet, this script
                               ends it (units back to available, event expired) before refusing
  Event: checkout_started (no counter change; the order's fields)
]]
--@include common
--@include events
--@include holds

local resKey = KEYS[1]
local stream = KEYS[2]
local deadlinesKey = KEYS[3]
local orderKey = KEYS[4]
local idemKey = KEYS[5]
local prefix = ARGV[1]
local user = ARGV[2]
local orderId = ARGV[3]
local method = ARGV[4]
local idemTtl = tonumber(ARGV[5])
local graceMs = tonumber(ARGV[6])
local rid = ARGV[7]

local earlier = storedAnswer(idemKey, idemTtl)
if earlier then return earlier end

if #method < 1 or #method > 64 then return refuse('INVALID_ARGUMENT', 'payment method must be 1-64 characters') end
local r = rcall('HMGET', resKey, 'user', 'sku', 'quantity', 'status', 'expires_at', 'order_id')
if not r[1] then return refuse('NOT_FOUND', 'no reservation ' .. rid) end
if r[1] ~= user then return refuse('FORBIDDEN', 'reservation ' .. rid .. ' belongs to another user') end
local sku, qty, status, expiresAt = r[2], tonumber(r[3]), r[4], tonumber(r[5])
if status == 'EXPIRED' then
  return answer(idemKey, idemTtl, refuse('RESERVATION_EXPIRED', 'reservation ' .. rid .. ' has expired'))
end
if status ~= 'RESERVED' then
  return answer(idemKey, idemTtl, refuse('INVALID_STATE', 'reservation ' .. rid .. ' is ' .. status))
end
if r[6] then
  return answer(idemKey, idemTtl, refuse('CHECKOUT_IN_PROGRESS', 'order ' .. r[6] .. ' is already paying for ' .. rid))
end
local now = nowMs()
if now >= expiresAt then
  endHold(prefix, stream, rid, 'EXPIRED', 'expired', now)
  return answer(idemKey, idemTtl, refuse('RESERVATION_EXPIRED', 'reservation ' .. rid .. ' has expired'))
end

-- Checks done; writes follow.
local unitPrice = tonumber(rcall('HGET', prefix .. 'sku:' .. sku, 'flash_price_cents'))
local order = {'id', orderId, 'reservation_id', rid, 'sku', sku, 'user', user, 'quantity', qty,
  'unit_price_cents', unitPrice, 'total_cents', unitPrice * qty, 'status', 'PENDING',
  'payment_method', method, 'created_at', now, 'updated_at', now}
rcall('HSET', orderKey, unpack(order))
local payUntil = math.max(expiresAt, now + graceMs)
rcall('HSET', resKey, 'order_id', orderId, 'pay_until', payUntil)
rcall('ZADD', deadlinesKey, payUntil, rid)
rcall('ZADD', prefix .. 'holds:' .. sku, payUntil, rid)
emit(stream, 'checkout_started', sku, now, 0, 0, 0, 0, {'order_id', orderId, 'reservation_id', rid,
  'user', user, 'quantity', qty, 'unit_price_cents', unitPrice, 'total_cents', unitPrice * qty,
  'payment_method', method})
return answer(idemKey, idemTtl, order)
