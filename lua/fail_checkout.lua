--[[
  Payment declined: the order goes PENDING -> FAILED and its reservation is RESERVED again (no longer
  being paid for) until its own deadline, so the user may try another payment while the hold lasts.

  Input:
    KEYS[1] order                fs:{pN}:order:<order id>
    KEYS[2] partition stream     fs:{pN}:events
    KEYS[3..] the order's reservation (fs:{pN}:open, fs:{pN}:r:<reservation id>) and its SKU's hash and
              holds (fs:{pN}:sku:<sku>, fs:{pN}:holds:<sku>), once a NEEDS_KEYS reply named them
    ARGV[1] user id              the caller; must own the order
    ARGV[2] reason               1..200 bytes, e.g. PAYMENT_DECLINED
    ARGV[3] order id
  Output:
    the order as a flat field/value array (status FAILED)
    error NEEDS_KEYS <key> ...   keys to read or write that are not in KEYS (nothing written): the client
                            sends the call again with them
    error INVALID_ARGUMENT  malformed reason (nothing written)
    error NOT_FOUND         no such order (nothing written)
    error FORBIDDEN         the order is another user's (nothing written)
    error INVALID_STATE     the order is not PENDING (nothing written)
  Event: ["checkout_failed", sku, at, reservation id, order id, user, reason]
  Publishes: the SKU id on fs:{pN}:stock when the hold's deadline goes back from its payment grace
             to its own expiry, maybe already passed: a sold-out answer may end sooner (includes/stock.lua)
]]
--@include common
--@include declared
--@include events
--@include reservations
--@include stock

local orderKey, stream = KEYS[1], KEYS[2]
local user, reason, orderId = ARGV[1], ARGV[2], ARGV[3]
local prefix = string.match(orderKey, '^(.*:)order:')

if #reason < 1 or #reason > MAX_REASON_BYTES then
  return refuse('INVALID_ARGUMENT', 'reason must be 1-' .. MAX_REASON_BYTES .. ' bytes')
end
local o = rcall('HMGET', orderKey, 'user', 'status', 'reservation_id', 'sku')
if not o[1] then return refuse('NOT_FOUND', 'no order ' .. orderId) end
if o[1] ~= user then return refuse('FORBIDDEN', 'order ' .. orderId .. ' belongs to another user') end
if o[2] ~= 'PENDING' then return refuse('INVALID_STATE', 'order ' .. orderId .. ' is ' .. o[2]) end

local rid, sku = o[3], o[4]
local skuKey = prefix .. 'sku:' .. sku
local refusal = needKeys({openKey(prefix), endedKey(prefix, rid), skuKey, prefix .. 'holds:' .. sku})
if refusal then return refusal end

-- Checks done; writes follow.
local now = nowMs()
local r = readReservation(prefix, rid)
if r and r.status == 'RESERVED' and r.order_id == orderId then
  r.order_id, r.pay_until = nil, 0
  writeReservation(prefix, rid, r)
  rcall('ZADD', prefix .. 'holds:' .. sku, r.expires_at, rid)
  -- Its deadline comes sooner: due_first (reserve.lua's sold-out refusal trusts it) may have to come too.
  local first = tonumber(rcall('HGET', skuKey, 'due_first'))
  if first and first > r.expires_at then rcall('HSET', skuKey, 'due_first', r.expires_at) end
  announceStock(prefix, sku)
end
rcall('HSET', orderKey, 'status', 'FAILED', 'failure_reason', reason, 'updated_at', now)
rcall('PEXPIRE', orderKey, RETENTION_MS)
emit(stream, 'checkout_failed', sku, now, ',"' .. rid .. '","' .. orderId .. '","' .. user .. '",' .. jtext(reason))
return rcall('HGETALL', orderKey)
