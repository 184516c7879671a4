--[[
  The sweeper's step for one partition: ends up to ARGV[1] holds whose deadline has passed, SKU by SKU.
  A hold whose payment grace ran out (checkout abandoned) ends too, and its order becomes FAILED.
  Bounded work per call, so the sweeper can run it often without stalling Redis.

  Input:
    KEYS[1] partition catalog    fs:{pN}:skus   set of the partition's SKU ids
    KEYS[2] partition stream     fs:{pN}:events
    ARGV[1] limit                integer 1..10,000
  Output:
    the number of reservations ended (integer)
    error INVALID_ARGUMENT  malformed limit (nothing written)
  Event: ["expired", sku, at, reservation id, user, quantity, order id or null] per reservation ended
  Publishes: the SKU id on fs:{pN}:stock once per SKU whose holds it ended (includes/stock.lua)
]]
--@include common
--@include events
--@include holds

local catalogKey, stream = KEYS[1], KEYS[2]
local prefix = string.match(catalogKey, '^(.*:)skus$')
local limit = parseCount(ARGV[1], MAX_SWEEP_BATCH)
if limit == nil or limit < 1 then
  return refuse('INVALID_ARGUMENT', 'limit must be an integer from 1 to ' .. MAX_SWEEP_BATCH)
end

local now = nowMs()
local ended = 0
for _, sku in ipairs(rcall('SMEMBERS', catalogKey)) do
  if ended >= limit then break end
  ended = ended + expireDue(prefix, stream, sku, now, limit - ended)
end
return ended
