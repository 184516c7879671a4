--[[
  Marks a confirmed order as shipped: CONFIRMED -> FULFILLED. Counters do not change (the units stay sold).

  Input:
    KEYS[1] order                fs:{pN}:order:<order id>
    KEYS[2] partition stream     fs:{pN}:events
    ARGV[1] order id
  Output:
    the order as a flat field/value array (status FULFILLED)
    error NOT_FOUND      no such order (nothing written)
    error INVALID_STATE  the order is not CONFIRMED (nothing written)
  Event: order_fulfilled (no counter change)
]]
--@include common
--@include events

local orderKey = KEYS[1]
local stream = KEYS[2]
local orderId = ARGV[1]

local o = rcall('HMGET', orderKey, 'user', 'status', 'sku', 'reservation_id')
if not o[1] then return refuse('NOT_FOUND', 'no order ' .. orderId) end
if o[2] ~= 'CONFIRMED' then return refuse('INVALID_STATE', 'order ' .. orderId .. ' is ' .. o[2]) end

local now = nowMs()
rcall('HSET', orderKey, 'status', 'FULFILLED', 'updated_at', now)
emit(stream, 'order_fulfilled', o[3], now, 0, 0, 0, 0, {'order_id', orderId, 'reservation_id', o[4], 'user', o[1]})
return entity(orderKey)
