--[[
  The sweeper's step for one partition: ends up to ARGV[1] holds whose deadline has passed, SKU by SKU.
  A hold whose payment grace ran out (checkout abandoned) ends too, and its order becomes FAILED.
  Bounded work per call, so the sweeper can run it often without stalling Redis.

  Input:
    KEYS[1] partition catalog    fs:{pN}:skus   set of the partition's SKU ids
    KEYS[2] partition stream     fs:{pN}:events
    KEYS[3] open holds           fs:{pN}:open   the partition's open reservation records
    KEYS[4..] the keys a NEEDS_KEYS reply named: each SKU's holds (fs:{pN}:holds:<sku>, fs:{pN}:due:<sku>:
              lua/includes/holds.lua) to read, and for
              the holds to end their SKU's hash, their records (fs:{pN}:r:<id>) and orders
    ARGV[1] limit                integer 1..10,000
  Output:
    the number of reservations ended (integer)
    error NEEDS_KEYS <key> ...   keys to read or write that are not in KEYS (nothing written): the client
                                 sends the call again with them (includes/common.lua)
    error INVALID_ARGUMENT  malformed limit (nothing written)
  Event: ["expired", sku, at, reservation id, user, quantity, order id or null] per reservation ended
  Publishes: the SKU id on fs:{pN}:stock once per SKU whose holds it ended (includes/stock.lua)
]]
--@include common
--@include declared
--@include events
--@include holds

local catalogKey, stream = KEYS[1], KEYS[2]
local prefix = string.match(catalogKey, '^(.*:)skus$')
local limit = parseCount(ARGV[1], MAX_SWEEP_BATCH)
if limit == nil or limit < 1 then
  return refuse('INVALID_ARGUMENT', 'limit must be an integer from 1 to ' .. MAX_SWEEP_BATCH)
end

local now = nowMs()
local skus = rcall('SMEMBERS', catalogKey)
local holdsKeys = {openKey(prefix)}
for i = 1, #skus do
  holdsKeys[#holdsKeys + 1] = prefix .. 'holds:' .. skus[i]
  holdsKeys[#holdsKeys + 1] = dueKey(prefix, skus[i])
end
local refusal = needKeys(holdsKeys)
if refusal then return refusal end

-- Which holds lapsed, and the keys ending them writes: all declared before the first write.
local found, keys, left = {}, {}, limit
for _, sku in ipairs(skus) do
  if left <= 0 then break end
  local lapsed, needed = lapsedHolds(prefix, sku, now, left)
  if #lapsed > 0 or lapsed.popped > 0 then
    found[#found + 1] = {sku, lapsed}
    for i = 1, #needed do keys[#keys + 1] = needed[i] end
    left = left - lapsed.ending
  end
end
refusal = needKeys(keys)
if refusal then return refusal end

local ended = 0
for i = 1, #found do
  ended = ended + endLapsed(prefix, stream, found[i][1], found[i][2], now)
end
return ended
