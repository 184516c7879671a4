--[[
  Cancels an order.
    PENDING   -> CANCELLED: the shopper cancels while paying; the hold ends as CANCELLED and its units go
                 back on sale (reserved -> available); the caller voids the payment's authorization.
    CONFIRMED -> CANCELLED: units go from sold back to available and the purchase no longer counts toward
                 the per-user limit; the caller refunds the payment.

  Input:
    KEYS[1] order                fs:{pN}:order:<order id>
    KEYS[2] partition stream     fs:{pN}:events
    KEYS[3..] the order's reservation (fs:{pN}:open, fs:{pN}:r:<reservation id>) and SKU
              (fs:{pN}:sku:<sku>, fs:{pN}:holds:<sku>), once a NEEDS_KEYS reply named them
    ARGV[1] user id              the caller; must own the order unless ARGV[2] is 1
    ARGV[2] admin                0 | 1
    ARGV[3] order id
  Output:
    the order as a flat field/value array (status CANCELLED)
    error NEEDS_KEYS <key> ...   keys to read or write that are not in KEYS (nothing written): the client
                               sends the call again with them
    error NOT_FOUND            no such order (nothing written)
    error FORBIDDEN            the order is another user's (nothing written)
    error INVALID_STATE        the order is FAILED, FULFILLED or CANCELLED (nothing written), or its
                               payment grace ran out: the hold ends as EXPIRED here, the order FAILED
  Event: ["checkout_cancelled", sku, at, reservation id, order id, user, quantity]  (from PENDING)
         ["order_cancelled", sku, at, reservation id, order id, user, quantity]     (from CONFIRMED)
  Publishes: the SKU id on fs:{pN}:stock whenever units go back to available (includes/stock.lua)
]]
--@include common
--@include declared
--@include events
--@include holds

local orderKey, stream = KEYS[1], KEYS[2]
local user, admin, orderId = ARGV[1], ARGV[2] == '1', ARGV[3]
local prefix = string.match(orderKey, '^(.*:)order:')

local o = rcall('HMGET', orderKey, 'user', 'status', 'reservation_id', 'sku', 'quantity')
if not o[1] then return refuse('NOT_FOUND', 'no order ' .. orderId) end
if o[1] ~= user and not admin then return refuse('FORBIDDEN', 'order ' .. orderId .. ' belongs to another user') end
local owner, status, rid, sku, qty = o[1], o[2], o[3], o[4], tonumber(o[5])
local now = nowMs()
local skuKey = prefix .. 'sku:' .. sku

if status == 'PENDING' then
  local refusal = needKeys({openKey(prefix), endedKey(prefix, rid), skuKey, prefix .. 'holds:' .. sku})
  if refusal then return refusal end
  local r = readReservation(prefix, rid)
  if not r or r.status ~= 'RESERVED' or r.order_id ~= orderId then
    return refuse('INVALID_STATE', 'reservation ' .. rid .. ' is not being paid for by order ' .. orderId)
  end
  if now >= deadline(r) then
    endHold(prefix, stream, rid, r, 'EXPIRED', 'expired', now)
    return refuse('INVALID_STATE', 'order ' .. orderId .. ' is FAILED: its payment grace ran out')
  end
  -- Checks done; writes follow.
  returnUnits(prefix, rid, r)
  r.status, r.ended_at, r.pay_until = 'CANCELLED', now, 0
  writeReservation(prefix, rid, r)
  rcall('HSET', orderKey, 'status', 'CANCELLED', 'updated_at', now)
  rcall('PEXPIRE', orderKey, RETENTION_MS)
  emit(stream, 'checkout_cancelled', sku, now, ',"' .. rid .. '","' .. orderId .. '","' .. owner .. '",' .. qty)
  return rcall('HGETALL', orderKey)
end
if status ~= 'CONFIRMED' then return refuse('INVALID_STATE', 'order ' .. orderId .. ' is ' .. status) end

local refusal = needKeys({skuKey})
if refusal then return refusal end

-- Checks done; writes follow.
local boughtField = 'b:' .. owner
local c = rcall('HMGET', skuKey, 'available', 'sold', boughtField)
local bought = tonumber(c[3] or 0) - qty
rcall('HSET', skuKey, 'available', tonumber(c[1]) + qty, 'sold', tonumber(c[2]) - qty)
if bought > 0 then rcall('HSET', skuKey, boughtField, bought) else rcall('HDEL', skuKey, boughtField) end
announceStock(prefix, sku)
rcall('HSET', orderKey, 'status', 'CANCELLED', 'updated_at', now)
rcall('PEXPIRE', orderKey, RETENTION_MS)
emit(stream, 'order_cancelled', sku, now, ',"' .. rid .. '","' .. orderId .. '","' .. owner .. '",' .. qty)
return rcall('HGETALL', orderKey)
