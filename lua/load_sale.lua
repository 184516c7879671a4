--[[
  Creates a SKU's sale or changes its settings. Only the fields given change; a new SKU needs `total`.
  Shrinking `total` below reserved + sold is refused, so no hold or sale is ever taken back. Every bound
  comes from engine/bounds.py (what every sink can hold).

  Input:
    KEYS[1] sku hash           fs:{pN}:sku:<sku>   counters and sale settings
    KEYS[2] partition stream   fs:{pN}:events
    KEYS[3] partition catalog  fs:{pN}:skus        set of the partition's SKU ids
    ARGV[1..] field, value pairs, any of:
      name                 text, 1..MAX_NAME_BYTES bytes
      price_cents          integer 0..MAX_PRICE_CENTS     list price
      flash_price_cents    integer 0..MAX_PRICE_CENTS     price during the sale
      total                integer 0..MAX_UNITS           units on sale
      per_user_limit       integer 1..MAX_PER_USER_LIMIT  units one user may hold + buy
      starts_at, ends_at   integer ms since epoch, 0..MAX_TIME_MS   0 = no bound
      reservation_ttl_ms   integer MIN_RESERVATION_TTL_MS..MAX_RESERVATION_TTL_MS   how long a hold lasts
      paused               0 | 1                          1 = reservations refused
  Output:
    the sale as a flat field/value array
    error INVALID_ARGUMENT   bad sku id, unknown field, malformed value, odd number of values,
                             ends_at <= starts_at
    error NOT_FOUND          changing a SKU that was never created without giving `total`
    error INVALID_QUANTITY   total below reserved + sold
    (on any error nothing is written)
  Event: ["sale_loaded", sku, at, change of total, name, price_cents, flash_price_cents, total, per_user_limit,
          starts_at, ends_at, reservation_ttl_ms, paused]   (the settings after the change)
  Publishes: the SKU id on fs:{pN}:stock on every change: total, window, pause, limit and TTL
             all change what reserve answers (includes/stock.lua)
]]
--@include common
--@include events
--@include sales
--@include stock

local skuKey, stream, catalogKey = KEYS[1], KEYS[2], KEYS[3]
local prefix, sku = skuKeyParts(skuKey)

local RANGES = {
  price_cents = {0, MAX_PRICE_CENTS}, flash_price_cents = {0, MAX_PRICE_CENTS}, total = {0, MAX_UNITS},
  per_user_limit = {1, MAX_PER_USER_LIMIT}, starts_at = {0, MAX_TIME_MS}, ends_at = {0, MAX_TIME_MS},
  reservation_ttl_ms = {MIN_RESERVATION_TTL_MS, MAX_RESERVATION_TTL_MS}, paused = {0, 1},
}

if not isIdentifier(sku) then return refuse('INVALID_ARGUMENT', 'sku id must be 1-128 letters, digits or -_.@') end
if #ARGV % 2 ~= 0 then return refuse('INVALID_ARGUMENT', 'settings must come as field/value pairs') end

local changes = {}
for i = 1, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  if field == 'name' then
    if #value < 1 or #value > MAX_NAME_BYTES then
      return refuse('INVALID_ARGUMENT', 'name must be 1-' .. MAX_NAME_BYTES .. ' bytes')
    end
    changes.name = value
  elseif RANGES[field] then
    local low, high = RANGES[field][1], RANGES[field][2]
    local n = parseCount(value, high)
    if n == nil or n < low then
      return refuse('INVALID_ARGUMENT', field .. ' must be an integer between ' .. int(low) .. ' and ' .. int(high))
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
local writes = {'updated_at', now, 'total', newTotal}
for field, value in pairs(changes) do
  if field ~= 'total' then
    writes[#writes + 1] = field
    writes[#writes + 1] = type(value) == 'number' and int(value) or value
  end
end
rcall('HSET', skuKey, unpack(writes))
rcall('HINCRBY', skuKey, 'available', delta)

local s = rcall('HMGET', skuKey, 'name', 'price_cents', 'flash_price_cents', 'total', 'per_user_limit',
  'starts_at', 'ends_at', 'reservation_ttl_ms', 'paused')
emit(stream, 'sale_loaded', sku, now, ',' .. delta .. ',' .. jtext(s[1]) .. ',' .. s[2] .. ',' .. s[3] .. ','
  .. s[4] .. ',' .. s[5] .. ',' .. s[6] .. ',' .. s[7] .. ',' .. s[8] .. ',' .. s[9])
announceStock(prefix, sku)
return saleReply(skuKey)
