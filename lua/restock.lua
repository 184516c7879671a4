--[[
  Adds units to a SKU's sale, or removes units that are still available. Total never drops below
  reserved + sold, and never passes MAX_UNITS (engine/bounds.py: what every sink can hold).

  Input:
    KEYS[1] sku hash             fs:{pN}:sku:<sku>
    KEYS[2] partition stream     fs:{pN}:events
    ARGV[1] delta                signed integer, not 0, |delta| <= MAX_UNITS
  Output:
    the sale as a flat field/value array
    error INVALID_QUANTITY  delta malformed or 0, removing more than is available, or a total past
                            MAX_UNITS (nothing written)
    error NOT_FOUND         no sale for this SKU (nothing written)
  Event: ["restocked", sku, at, delta, total after]
  Publishes: the SKU id on fs:{pN}:stock when units are added (includes/stock.lua)
]]
--@include common
--@include events
--@include sales
--@include stock

local skuKey, stream = KEYS[1], KEYS[2]
local prefix, sku = skuKeyParts(skuKey)
local delta = parseSigned(ARGV[1], MAX_UNITS)

if delta == nil or delta == 0 then
  return refuse('INVALID_QUANTITY', 'delta must be a non-zero integer within +-' .. MAX_UNITS)
end
local s = rcall('HMGET', skuKey, 'available', 'total')
if not s[1] then return refuse('NOT_FOUND', 'no sale for sku ' .. sku) end
local available, total = tonumber(s[1]), tonumber(s[2])
if available + delta < 0 then
  return refuse('INVALID_QUANTITY', 'only ' .. available .. ' units are available to remove')
end
if total + delta > MAX_UNITS then
  return refuse('INVALID_QUANTITY', 'total would be ' .. (total + delta) .. ', above the most a sale can hold ('
    .. MAX_UNITS .. ')')
end

local now = nowMs()
rcall('HSET', skuKey, 'available', available + delta, 'total', total + delta, 'updated_at', now)
emit(stream, 'restocked', sku, now, ',' .. delta .. ',' .. (total + delta))
if delta > 0 then announceStock(prefix, sku) end
return saleReply(skuKey)
