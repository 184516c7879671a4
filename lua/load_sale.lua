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
      buckets, bucket      integer 1..MAX_BUCKETS, 0..buckets-1: a hot SKU's stock split into buckets on
                           different partitions (engine/buckets.py); this hash is bucket `bucket`. Set when
                           the sale is created, fixed afterwards. A bucket other than 0 starts with no unit
                           (total 0, units come by transfers) and its changes emit bucket_set, not
                           sale_loaded: bucket 0 is the sale's record of settings and total.
  Output:
    the sale as a flat field/value array
    error INVALID_ARGUMENT   bad sku id, unknown field, malformed value, odd number of values,
                             ends_at <= starts_at
    error NOT_FOUND          changing a SKU that was never created without giving `total`
    error INVALID_STATE      buckets or bucket changed on a sale that exists
    error INVALID_ARGUMENT   units given for a bucket other than 0
    error INVALID_QUANTITY   total below reserved + sold (+ units moved out of this bucket)
    (on any error nothing is written)
  Event: ["sale_loaded", sku, at, change of total, name, price_cents, flash_price_cents, total, per_user_limit,
          starts_at, ends_at, reservation_ttl_ms, paused]   (the settings after the change)
         a bucket other than 0: ["bucket_set", sku, at, bucket, buckets, name, price_cents, flash_price_cents,
          per_user_limit, starts_at, ends_at, reservation_ttl_ms, paused]
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
  buckets = {1, MAX_BUCKETS}, bucket = {0, MAX_BUCKETS - 1},
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

local current = rcall('HMGET', skuKey, 'total', 'reserved', 'sold', 'starts_at', 'ends_at', 'buckets', 'bucket',
  'moved')
local exists = current[1] ~= false
if not exists and changes.total == nil then
  return refuse('NOT_FOUND', 'sku ' .. sku .. ' has no sale; give total to create one')
end
local buckets = tonumber(current[6] or (exists and 1) or changes.buckets or 1)
local bucket = tonumber(current[7] or (exists and 0) or changes.bucket or 0)
if (changes.buckets and changes.buckets ~= buckets) or (changes.bucket and changes.bucket ~= bucket) then
  return refuse('INVALID_STATE', 'buckets is fixed once a sale exists (sku ' .. sku .. ' has ' .. buckets .. ')')
end
if bucket >= buckets then return refuse('INVALID_ARGUMENT', 'bucket must be below buckets') end
if bucket > 0 and changes.total and changes.total ~= 0 then
  return refuse('INVALID_ARGUMENT', 'units of a bucketed sale are set on bucket 0; others get theirs by transfers')
end
local oldTotal = tonumber(current[1] or 0)
local committed = tonumber(current[2] or 0) + tonumber(current[3] or 0) - tonumber(current[8] or 0)
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
  if field ~= 'total' and field ~= 'buckets' and field ~= 'bucket' then
    writes[#writes + 1] = field
    writes[#writes + 1] = type(value) == 'number' and int(value) or value
  end
end
if buckets > 1 then
  writes[#writes + 1] = 'buckets'
  writes[#writes + 1] = int(buckets)
  writes[#writes + 1] = 'bucket'
  writes[#writes + 1] = int(bucket)
end
rcall('HSET', skuKey, unpack(writes))
rcall('HINCRBY', skuKey, 'available', delta)

local s = rcall('HMGET', skuKey, 'name', 'price_cents', 'flash_price_cents', 'total', 'per_user_limit',
  'starts_at', 'ends_at', 'reservation_ttl_ms', 'paused')
if bucket > 0 then
  local b = rcall('HMGET', skuKey, 'name', 'price_cents', 'flash_price_cents', 'per_user_limit', 'starts_at',
    'ends_at', 'reservation_ttl_ms', 'paused')
  emit(stream, 'bucket_set', sku, now, ',' .. bucket .. ',' .. buckets .. ',' .. jtext(b[1]) .. ',' .. b[2] .. ','
    .. b[3] .. ',' .. b[4] .. ',' .. b[5] .. ',' .. b[6] .. ',' .. b[7] .. ',' .. b[8])
  announceStock(prefix, sku)
  return saleReply(skuKey)
end
emit(stream, 'sale_loaded', sku, now, ',' .. delta .. ',' .. jtext(s[1]) .. ',' .. s[2] .. ',' .. s[3] .. ','
  .. s[4] .. ',' .. s[5] .. ',' .. s[6] .. ',' .. s[7] .. ',' .. s[8] .. ',' .. s[9])
announceStock(prefix, sku)
return saleReply(skuKey)
