--[[
  Marks a confirmed order as shipped: CONFIRMED -> FULFILLED (final: kept in Redis for the retention
  period, in PostgreSQL for good). Counters do not change (the units stay sold).

  Input:
    KEYS[1] order                fs:{pN}:order:<order id>
    KEYS[2] partition stream     fs:{pN}:events
    ARGV[1] order id
  Output:
    the order as a flat field/value array (status FULFILLED)
    error NOT_FOUND      no such order (nothing written)
    error INVALID_STATE  the order is not CONFIRMED (nothing written)
  Event: ["order_fulfilled", sku, at, reservation id, order id, user]
]]
--@include common
--@include events

local orderKey, stream = KEYS[1], KEYS[2]
local orderId = ARGV[1]

local o = rcall('HMGET', orderKey, 'user', 'status', 'sku', 'reservation_id')
if not o[1] then return refuse('NOT_FOUND', 'no order ' .. orderId) end
if o[2] ~= 'CONFIRMED' then return refuse('INVALID_STATE', 'order ' .. orderId .. ' is ' .. o[2]) end

local now = nowMs()
rcall('HSET', orderKey, 'status', 'FULFILLED', 'updated_at', now)
rcall('PEXPIRE', orderKey, RETENTION_MS)
emit(stream, 'order_fulfilled', o[3], now, ',"' .. o[4] .. '","' .. orderId .. '","' .. o[1] .. '"')
return rcall('HGETALL', orderKey)
