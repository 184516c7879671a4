--[[
  Starts paying for a reservation: creates its order as PENDING and marks the reservation as being paid
  for, so a second checkout of it is refused (no double charge) and the sweeper leaves it alone until
  the payment grace period ends. The hold's units stay reserved.

  Input:
    KEYS[1] open holds           fs:{pN}:open   the partition's open reservation records
    KEYS[2] ended reservation    fs:{pN}:r:<reservation id>   (its record once it ended)
    KEYS[3] partition stream     fs:{pN}:events
    KEYS[4] new order            fs:{pN}:order:<order id>
    KEYS[5..] with an idempotency key: its answers' generations fs:{pN}:idem:<g> and idem:<g - 1>
              (g = now // ttl by the client's clock); the reservation's SKU hash and holds
              (fs:{pN}:sku:<sku>, fs:{pN}:holds:<sku>), and the order of a lapsed payment it ends, once a
              NEEDS_KEYS reply named them
    ARGV[1] user id              the caller; must own the reservation
    ARGV[2] new order id
    ARGV[3] payment method       1..64 bytes
    ARGV[4] payment grace ms     how long the hold is kept for a payment in flight
    ARGV[5] reservation id
    ARGV[6] idempotency ttl ms   (optional, with ARGV[7])
    ARGV[7] idempotency field    "checkout:<reservation id>:<user>:<key>"
  Output:
    the order as a flat field/value array (status PENDING)
    a repeat with the same idempotency field returns the first answer, refusal included
    error NEEDS_KEYS <key> ...   keys to read or write that are not in KEYS (nothing written, not
                               remembered): the client sends the call again with them
    error INVALID_ARGUMENT     malformed payment method (nothing written)
    error NOT_FOUND            no such reservation (nothing written)
    error FORBIDDEN            the reservation is another user's (nothing written)
    error CHECKOUT_IN_PROGRESS a checkout of this reservation is already paying (nothing written)
    error INVALID_STATE        the reservation is CONFIRMED or CANCELLED (nothing written)
    error RESERVATION_EXPIRED  its deadline has passed; if the sweeper had not ended it yet, this script
                               ends it (units back to available, event expired) before refusing
  Event: ["checkout_started", sku, at, reservation id, order id, user, quantity, unit price cents,
          payment method, pay_until]
  Publishes: the SKU id on fs:{pN}:stock when it ends an expired hold (includes/stock.lua)
]]
--@include common
--@include declared
--@include events
--@include holds
--@include idempotency

local stream, orderKey = KEYS[3], KEYS[4]
local user, orderId, method, graceMs, rid = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local idemTtl, idemField = tonumber(ARGV[6] or 0), ARGV[7]
local prefix = string.match(KEYS[1], '^(.*:)open$')
local now = nowMs()

if idemTtl > 0 then
  local current, previous = answerKeys(prefix, idemTtl, now)
  local refusal = needAnswerKeys(current, previous)
  if refusal then return refusal end
  local earlier = storedAnswer(current, previous, idemField)
  if earlier then return earlier end
end

if #method < 1 or #method > MAX_PAYMENT_METHOD_BYTES then
  return refuse('INVALID_ARGUMENT', 'payment method must be 1-' .. MAX_PAYMENT_METHOD_BYTES .. ' bytes')
end
local r = readReservation(prefix, rid)
if not r then return refuse('NOT_FOUND', 'no reservation ' .. rid) end
if r.user ~= user then return refuse('FORBIDDEN', 'reservation ' .. rid .. ' belongs to another user') end
if r.status == 'EXPIRED' then
  return remember(prefix, idemField, idemTtl, now, refuse('RESERVATION_EXPIRED', 'reservation ' .. rid .. ' has expired'))
end
if r.status ~= 'RESERVED' then
  return remember(prefix, idemField, idemTtl, now, refuse('INVALID_STATE', 'reservation ' .. rid .. ' is ' .. r.status))
end
if now >= deadline(r) then
  local refusal = needKeys(holdKeys(prefix, rid, r))
  if refusal then return refusal end
  endHold(prefix, stream, rid, r, 'EXPIRED', 'expired', now)
  return remember(prefix, idemField, idemTtl, now, refuse('RESERVATION_EXPIRED', 'reservation ' .. rid .. ' has expired'))
end
if r.order_id then
  return remember(prefix, idemField, idemTtl, now, refuse('CHECKOUT_IN_PROGRESS', 'order ' .. r.order_id .. ' is already paying for ' .. rid))
end

local refusal = needKeys(holdKeys(prefix, rid, r))
if refusal then return refusal end

-- Checks done; writes follow.
local unitPrice = tonumber(rcall('HGET', prefix .. 'sku:' .. r.sku, 'flash_price_cents'))
local order = {'id', orderId, 'reservation_id', rid, 'sku', r.sku, 'user', user, 'quantity', r.quantity,
  'unit_price_cents', int(unitPrice), 'total_cents', int(unitPrice * r.quantity), 'status', 'PENDING',
  'payment_method', method, 'created_at', now, 'updated_at', now}
rcall('HSET', orderKey, unpack(order))
r.order_id, r.pay_until = orderId, math.max(r.expires_at, now + graceMs)
writeReservation(prefix, rid, r)
rcall('ZADD', prefix .. 'holds:' .. r.sku, r.pay_until, rid)
emit(stream, 'checkout_started', r.sku, now, ',"' .. rid .. '","' .. orderId .. '","' .. user .. '",'
  .. r.quantity .. ',' .. int(unitPrice) .. ',' .. jtext(method) .. ',' .. r.pay_until)
return remember(prefix, idemField, idemTtl, now, order)
