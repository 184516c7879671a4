--[[
  Payment declined: the order goes PENDING -> FAILED and its reservation is RESERVED again (no longer
  being paid for) until its own deadline, so the user may try another payment while the hold lasts.

  Input:
    KEYS[1] order                fs:{pN}:order:<order id>
    KEYS[2] partition stream     fs:{pN}:events
    ARGV[1] key prefix of the partition  fs:{pN}:
    ARGV[2] user id              the caller; must own the order
    ARGV[3] reason               1..200 characters, e.g. PAYMENT_DECLINED
    ARGV[4] order id
  Output:
    the order as a flat field/value array (status FAILED)
    error INVALID_ARGUMENT  malformed reason (nothing written)
    error NOT_FOUND         no such order (nothing written)
    error FORBIDDEN         the order is another user's (nothing written)
    error INVALID_STATE     the order is not PENDING (nothing written)
  Event: checkout_failed (no counter change)
]]
--@include common
--@include events

local orderKey = KEYS[1]
local stream = KEYS[2]
local prefix = ARGV[1]
local user = ARGV[2]
local reason = ARGV[3]
local orderId = ARGV[4]

if #reason < 1 or #reason > 200 then return refuse('INVALID_ARGUMENT', 'reason must be 1-200 characters') end
local o = rcall('HMGET', orderKey, 'user', 'status', 'reservation_id', 'sku')
if not o[1] then return refuse('NOT_FOUND', 'no order ' .. orderId) end
if o[1] ~= user then return refuse('FORBIDDEN', 'order ' .. orderId .. ' belongs to another user') end
if o[2] ~= 'PENDING' then return refuse('INVALID_STATE', 'order ' .. orderId .. ' is ' .. o[2]) end

-- Checks done; writes follow.
local rid, sku = o[3], o[4]
local now = nowMs()
local resKey = prefix .. 'res:' .. rid
local expiresAt = rcall('HGET', resKey, 'expires_at')
rcall('HDEL', resKey, 'order_id', 'pay_until')
rcall('ZADD', prefix .. 'deadlines', expiresAt, rid)
rcall('ZADD', prefix .. 'holds:' .. sku, expiresAt, rid)
rcall('HSET', orderKey, 'status', 'FAILED', 'failure_reason', reason, 'updated_at', now)
rcall('PEXPIRE', orderKey, RETENTION_MS)
emit(stream, 'checkout_failed', sku, now, 0, 0, 0, 0, {'order_id', orderId, 'reservation_id', rid,
  'user', user, 'reason', reason})
return entity(orderKey)
