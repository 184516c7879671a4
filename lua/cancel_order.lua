--[[
  Cancels a confirmed order: CONFIRMED -> CANCELLED, its units go from sold back to available and the
  user's purchase no longer counts toward the per-user limit.

  Input:
    KEYS[1] order                fs:{pN}:order:<order id>
    KEYS[2] partition stream     fs:{pN}:events
    ARGV[1] key prefix of the partition  fs:{pN}:
    ARGV[2] user id              the caller; must own the order unless ARGV[3] is 1
    ARGV[3] admin                0 | 1
    ARGV[4] order id
  Output:
    the order as a flat field/value array (status CANCELLED)
    error NOT_FOUND            no such order (nothing written)
    error FORBIDDEN            the order is another user's (nothing written)
    error CHECKOUT_IN_PROGRESS the order is PENDING: its payment is in flight (nothing written)
    error INVALID_STATE        the order is FAILED, FULFILLED or CANCELLED (nothing written)
  Event: order_cancelled (available +q, sold -q)
]]
--@include common
--@include events

local orderKey = KEYS[1]
local stream = KEYS[2]
local prefix = ARGV[1]
local user = ARGV[2]
local admin = ARGV[3] == '1'
local orderId = ARGV[4]

local o = rcall('HMGET', orderKey, 'user', 'status', 'reservation_id', 'sku', 'quantity')
if not o[1] then return refuse('NOT_FOUND', 'no order ' .. orderId) end
if o[1] ~= user and not admin then return refuse('FORBIDDEN', 'order ' .. orderId .. ' belongs to another user') end
if o[2] == 'PENDING' then return refuse('CHECKOUT_IN_PROGRESS', 'order ' .. orderId .. ' is still paying') end
if o[2] ~= 'CONFIRMED' then return refuse('INVALID_STATE', 'order ' .. orderId .. ' is ' .. o[2]) end

-- Checks done; writes follow.
local owner, rid, sku, qty = o[1], o[3], o[4], tonumber(o[5])
local now = nowMs()
local skuKey = prefix .. 'sku:' .. sku
rcall('HINCRBY', skuKey, 'sold', -qty)
rcall('HINCRBY', skuKey, 'available', qty)
rcall('HINCRBY', prefix .. 'user:' .. sku .. ':' .. owner, 'purchased', -qty)
rcall('HSET', orderKey, 'status', 'CANCELLED', 'updated_at', now)
rcall('PEXPIRE', orderKey, RETENTION_MS)
emit(stream, 'order_cancelled', sku, now, qty, 0, -qty, 0, {'order_id', orderId, 'reservation_id', rid,
  'user', owner, 'quantity', qty})
return entity(orderKey)
