--[[
  Adds units to a SKU's sale, or removes units that are still available. Total never drops below
  reserved + sold.

  Input:
    KEYS[1] sku hash             fs:{pN}:sku:<sku>
    KEYS[2] partition stream     fs:{pN}:events
    ARGV[1] delta                signed integer, not 0, |delta| <= 1,000,000,000
    ARGV[2] sku id
  Output:
    the SKU hash as a flat field/value array
    error INVALID_QUANTITY  delta malformed or 0, or removing more than is available (nothing written)
    error NOT_FOUND         no sale for this SKU (nothing written)
  Event: restocked (available and total by delta)
]]
--@include common
--@include events

local skuKey = KEYS[1]
local stream = KEYS[2]
local delta = parseSigned(ARGV[1], 1e9)
local sku = ARGV[2]

if delta == nil or delta == 0 then
  return refuse('INVALID_QUANTITY', 'delta must be a non-zero integer within +-1000000000')
end
local s = rcall('HMGET', skuKey, 'available', 'total')
if not s[1] then return refuse('NOT_FOUND', 'no sale for sku ' .. sku) end
if tonumber(s[1]) + delta < 0 then
  return refuse('INVALID_QUANTITY', 'only ' .. s[1] .. ' units are available to remove')
end

local now = nowMs()
rcall('HINCRBY', skuKey, 'available', delta)
local total = rcall('HINCRBY', skuKey, 'total', delta)
rcall('HSET', skuKey, 'updated_at', now)
emit(stream, 'restocked', sku, now, delta, 0, 0, delta, {'total', total})
return entity(skuKey)
