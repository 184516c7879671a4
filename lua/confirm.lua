--[[
  Payment authorized: the order goes PENDING -> CONFIRMED, its reservation RESERVED -> CONFIRMED, the
  units move from reserved to sold and count toward the user's purchases. A payment that arrives after
  the hold's payment grace confirms nothing: the hold ends as EXPIRED here (lazily, like release and
  begin_checkout), its order FAILED, and the caller voids the authorization.

  Input:
    KEYS[1] order                fs:{pN}:order:<order id>
    KEYS[2] partition stream     fs:{pN}:events
    KEYS[3..] with an idempotency key: its answers' generations fs:{pN}:idem:<g> and idem:<g - 1>
              (g = now // ttl by the client's clock); the order's reservation (fs:{pN}:open,
              fs:{pN}:r:<reservation id>) and SKU (fs:{pN}:sku:<sku>, fs:{pN}:holds:<sku>), once a
              NEEDS_KEYS reply named them
    ARGV[1] user id              the caller; must own the order
    ARGV[2] payment transaction id   0..128 bytes
    ARGV[3] order id
    ARGV[4] idempotency ttl ms   (optional, with ARGV[5])
    ARGV[5] idempotency field    "confirm:<order id>:<user>:<key>"
  Output:
    the order as a flat field/value array (status CONFIRMED)
    a repeat with the same idempotency field returns the first answer, refusal included
    error NEEDS_KEYS <key> ...   keys to read or write that are not in KEYS (nothing written, not
                               remembered): the client sends the call again with them
    error INVALID_ARGUMENT     transaction id too long (nothing written)
    error NOT_FOUND            no such order (nothing written)
    error FORBIDDEN            the order is another user's (nothing written)
    error INVALID_STATE        the order is not PENDING, e.g. FAILED after the payment grace ran out
                               (nothing written)
    error RESERVATION_EXPIRED  the payment grace has passed: the hold ends here (event expired)
  Event: ["confirmed", sku, at, reservation id, order id, user, quantity, transaction id]
  Publishes: the SKU id on fs:{pN}:stock when it ends an expired hold (includes/stock.lua)
]]
--@include common
--@include declared
--@include events
--@include holds
--@include idempotency

local orderKey, stream = KEYS[1], KEYS[2]
local user, transactionId, orderId = ARGV[1], ARGV[2], ARGV[3]
local idemTtl, idemField = tonumber(ARGV[4] or 0), ARGV[5]
local prefix = string.match(orderKey, '^(.*:)order:')
local now = nowMs()

if idemTtl > 0 then
  local current, previous = answerKeys(prefix, idemTtl, now)
  local refusal = needAnswerKeys(current, previous)
  if refusal then return refusal end
  local earlier = storedAnswer(current, previous, idemField)
  if earlier then return earlier end
end

if #transactionId > MAX_TRANSACTION_ID_BYTES then
  return refuse('INVALID_ARGUMENT', 'transaction id must be at most ' .. MAX_TRANSACTION_ID_BYTES .. ' bytes')
end
local o = rcall('HMGET', orderKey, 'user', 'status', 'reservation_id', 'sku', 'quantity')
if not o[1] then return refuse('NOT_FOUND', 'no order ' .. orderId) end
if o[1] ~= user then return refuse('FORBIDDEN', 'order ' .. orderId .. ' belongs to another user') end
if o[2] ~= 'PENDING' then
  return remember(prefix, idemField, idemTtl, now, refuse('INVALID_STATE', 'order ' .. orderId .. ' is ' .. o[2]))
end
local rid, sku, qty = o[3], o[4], tonumber(o[5])
local skuKey = prefix .. 'sku:' .. sku
local refusal = needKeys({openKey(prefix), endedKey(prefix, rid), skuKey, prefix .. 'holds:' .. sku})
if refusal then return refusal end
local r = readReservation(prefix, rid)
if not r or r.status ~= 'RESERVED' or r.order_id ~= orderId then
  -- Cannot happen through these scripts: a PENDING order's hold is open and paid for by it.
  return refuse('INVALID_STATE', 'reservation ' .. rid .. ' is not being paid for by order ' .. orderId)
end
if now >= deadline(r) then
  endHold(prefix, stream, rid, r, 'EXPIRED', 'expired', now)
  return remember(prefix, idemField, idemTtl, now, refuse('RESERVATION_EXPIRED', 'reservation ' .. rid .. ' expired before order ' .. orderId .. ' was paid'))
end

-- Checks done; writes follow.
local heldField, boughtField = 'h:' .. user, 'b:' .. user
local c = rcall('HMGET', skuKey, 'reserved', 'sold', heldField, boughtField)
local held = tonumber(c[3] or 0) - qty
rcall('HSET', skuKey, 'reserved', tonumber(c[1]) - qty, 'sold', tonumber(c[2]) + qty,
  boughtField, tonumber(c[4] or 0) + qty)
if held > 0 then rcall('HSET', skuKey, heldField, held) else rcall('HDEL', skuKey, heldField) end
rcall('ZREM', prefix .. 'holds:' .. sku, rid)
r.status, r.ended_at, r.pay_until = 'CONFIRMED', now, 0
writeReservation(prefix, rid, r)
rcall('HSET', orderKey, 'status', 'CONFIRMED', 'transaction_id', transactionId, 'updated_at', now)
emit(stream, 'confirmed', sku, now, ',"' .. rid .. '","' .. orderId .. '","' .. user .. '",' .. qty .. ','
  .. jtext(transactionId))
return remember(prefix, idemField, idemTtl, now, rcall('HGETALL', orderKey))
