--[[
  Creates a SKU's sale or changes its settings. Only the fields given change; a new SKU needs `total`.
  Shrinking `total` below reserved + sold is refused, so no hold or sale is ever taken back.

  Input:
    KEYS[1] sku hash           fs:{pN}:sku:<sku>   counters and sale settings
    KEYS[2] partition stream   fs:{pN}:events
    KEYS[3] partition catalog  fs:{pN}:skus        set of the partition's SKU ids
    ARGV[1] sku id
    ARGV[2..] field, value pairs, any of:
      name                 text, 1..200 bytes
      price_cents          integer >= 0           list price
      flash_price_cents    integer >= 0           price during the sale
      total                integer >= 0           units on sale
      per_user_limit       integer >= 1           units one user may hold + buy
      starts_at, ends_at   integer ms since epoch 0 = no bound
      reservation_ttl_ms   integer >= 1000        how long a hold lasts
      paused               0 | 1                  1 = reservations refused
  Output:
    the SKU hash as a flat field/value array
    error INVALID_ARGUMENT   unknown field, malformed value, odd number of values, ends_at <= starts_at
    error NOT_FOUND          changing a SKU that was never created without giving `total`
    error INVALID_QUANTITY   total below reserved + sold
    (on any error nothing is written)
  Event: sale_loaded (deltas: available and total by the change of total; the settings after)
]]
--@include common
--@include events

local skuKey = KEYS[1]
local stream = KEYS[2]
local catalogKey = KEYS[3]
local sku = ARGV[1]

local LIMITS = {
  price_cents = 1e12, flash_price_cents = 1e12, total = 1e9, per_user_limit = 1e6,
  starts_at = 1e14, ends_at = 1e14, reservation_ttl_ms = 1e10, paused = 1,
}
local MINIMUM = {per_user_limit = 1, reservation_ttl_ms = 1000}

if not isIdentifier(sku) then return refuse('INVALID_ARGUMENT', 'sku id must be 1-128 letters, digits or -_.@') end
if #ARGV % 2 ~= 1 then return refuse('INVALID_ARGUMENT', 'settings must come as field/value pairs') end

local changes = {}
for i = 2, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  if field == 'name' then
    if #value < 1 or #value > 200 then return refuse('INVALID_ARGUMENT', 'name must be 1-200 bytes') end
    changes.name = value
  elseif LIMITS[field] then
    local n = parseCount(value, LIMITS[field])
    if n == nil or n < (MINIMUM[field] or 0) then
      return refuse('INVALID_ARGUMENT', field .. ' must be an integer between ' .. (MINIMUM[field] or 0)
        .. ' and ' .. string.format('%d', LIMITS[field]))
    end
    changes[field] = n
  else
    return refuse('INVALID_ARGUMENT', 'unknown sale field ' .. field)
  end
end

local current = rcall('HMGET', skuKey, 'total', 'reserved', 'sold', 'starts_at', 'ends_at')
local exists = current[1] ~= false
if not exists and changes.total == nil then
  return refuse('NOT_FOUND', 'sku ' .. sku .. ' has no sale; give total to create one')
end
local oldTotal = tonumber(current[1] or 0)
local committed = tonumber(current[2] or 0) + tonumber(current[3] or 0)
local newTotal = changes.total or oldTotal
if newTotal < committed then
  return refuse('INVALID_QUANTITY', 'total ' .. newTotal .. ' is below reserved + sold = ' .. committed)
end
local startsAt = changes.starts_at or tonumber(current[4] or 0)
local endsAt = changes.ends_at or tonumber(current[5] or 0)
if endsAt > 0 and endsAt <= startsAt then
  return refuse('INVALID_ARGUMENT', 'ends_at must be after starts_at')
end

-- Checks done; writes follow.
local now = nowMs()
if not exists then
  rcall('HSET', skuKey, 'sku', sku, 'name', sku, 'price_cents', 0, 'flash_price_cents', 0,
    'total', 0, 'available', 0, 'reserved', 0, 'sold', 0, 'per_user_limit', 1,
    'starts_at', 0, 'ends_at', 0, 'reservation_ttl_ms', 120000, 'paused', 0, 'created_at', now)
  rcall('SADD', catalogKey, sku)
end
local delta = newTotal - oldTotal
local writes = {}
for field, value in pairs(changes) do
  if field ~= 'total' then
    writes[#writes + 1] = field
    writes[#writes + 1] = value
  end
end
writes[#writes + 1] = 'updated_at'
writes[#writes + 1] = now
rcall('HSET', skuKey, unpack(writes))
rcall('HINCRBY', skuKey, 'total', delta)
rcall('HINCRBY', skuKey, 'available', delta)

local s = rcall('HMGET', skuKey, 'name', 'price_cents', 'flash_price_cents', 'total', 'per_user_limit',
  'starts_at', 'ends_at', 'reservation_ttl_ms', 'paused')
emit(stream, 'sale_loaded', sku, now, delta, 0, 0, delta, {
  'name', s[1], 'price_cents', s[2], 'flash_price_cents', s[3], 'total', s[4], 'per_user_limit', s[5],
  'starts_at', s[6], 'ends_at', s[7], 'reservation_ttl_ms', s[8], 'paused', s[9],
})
return entity(skuKey)
