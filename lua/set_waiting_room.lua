--[[
  Puts a waiting room in front of a SKU's sale, changes it, or takes it away. While one is on, shoppers
  join a line (queue_join), the worker's admitter lets them in at the set rate (queue_admit), and reserve
  refuses anyone without a live admission (NOT_ADMITTED). The settings are fields of the SKU hash, read
  by reserve in the read it makes anyway, so a sale without a waiting room pays nothing for the feature.

  Input:
    KEYS[1] sku hash           fs:{pN}:sku:<sku>   sale settings; gets waiting_room, wr_* fields
    KEYS[2] partition stream   fs:{pN}:events
    ARGV[1] on                 0 | 1
    ARGV[2] opens at           ms since epoch, 0..MAX_TIME_MS: joiners are taken from then on (0: at any
                               time); must be before the sale's start when both are set
    ARGV[3] admit per second   integer 1..MAX_ADMIT_PER_S
    ARGV[4] stock factor       integer 0..MAX_STOCK_FACTOR: at most factor x available shoppers admitted
                               and not yet reserving at once (0: no such rule, the rate alone)
    ARGV[5] admission ttl ms   integer MIN_ADMISSION_TTL_MS..MAX_ADMISSION_TTL_MS: how long an
                               admitted shopper may reserve
  Output:
    the sale as a flat field/value array (lua/includes/sales.lua)
    error INVALID_ARGUMENT   a malformed or out-of-range value; opens at not before the sale's start
    error NOT_FOUND          no sale for this SKU
    (on any error nothing is written)
  Event: ["waiting_room_set", sku, at, on, opens_at, admit_per_s, stock_factor, admission_ttl_ms]
]]
--@include common
--@include events
--@include sales

local skuKey, stream = KEYS[1], KEYS[2]
local _, sku = skuKeyParts(skuKey)

local on = parseCount(ARGV[1], 1)
local opensAt = parseCount(ARGV[2], MAX_TIME_MS)
local rate = parseCount(ARGV[3], MAX_ADMIT_PER_S)
local factor = parseCount(ARGV[4], MAX_STOCK_FACTOR)
local ttl = parseCount(ARGV[5], MAX_ADMISSION_TTL_MS)
if on == nil then return refuse('INVALID_ARGUMENT', 'on must be 0 or 1') end
if opensAt == nil then return refuse('INVALID_ARGUMENT', 'opens_at must be ms from 0 to ' .. int(MAX_TIME_MS)) end
if rate == nil or rate < 1 then
  return refuse('INVALID_ARGUMENT', 'admit_per_s must be an integer from 1 to ' .. MAX_ADMIT_PER_S)
end
if factor == nil then
  return refuse('INVALID_ARGUMENT', 'stock_factor must be an integer from 0 to ' .. MAX_STOCK_FACTOR)
end
if ttl == nil or ttl < MIN_ADMISSION_TTL_MS then
  return refuse('INVALID_ARGUMENT', 'admission_ttl_ms must be an integer from ' .. MIN_ADMISSION_TTL_MS .. ' to '
    .. MAX_ADMISSION_TTL_MS)
end
local startsAt = rcall('HGET', skuKey, 'starts_at')
if not startsAt then return refuse('NOT_FOUND', 'no sale for sku ' .. sku) end
startsAt = tonumber(startsAt)
if opensAt > 0 and startsAt > 0 and opensAt >= startsAt then
  return refuse('INVALID_ARGUMENT', 'the waiting room must open before the sale starts')
end

-- Checks done; writes follow.
local now = nowMs()
rcall('HSET', skuKey, 'waiting_room', on, 'wr_opens_at', opensAt, 'wr_rate', rate, 'wr_stock_factor', factor,
  'wr_admission_ttl_ms', ttl, 'updated_at', now)
emit(stream, 'waiting_room_set', sku, now, ',' .. on .. ',' .. int(opensAt) .. ',' .. rate .. ',' .. factor .. ','
  .. int(ttl))
return saleReply(skuKey)
