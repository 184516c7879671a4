--[[
  Deposits the units a transfer withdrew from another bucket of the SKU (lua/transfer_out.lua) into this
  one, once: the receipt (a field of the partition's receipts hash) makes a repeat change nothing. A
  caller that is not the sweeper may deposit only while the transfer is young (ARGV[5]): past that, a
  transfer is the sweeper's to finish, so that a late duplicate cannot arrive after the sweeper finished
  it and its receipt was pruned (engine/buckets.py says when receipts are pruned).

  Input:
    KEYS[1] bucket's sku hash   fs:{pN}:sku:<sku>
    KEYS[2] partition stream    fs:{pN}:events
    KEYS[3] receipts            fs:{pN}:moves:in   transfer id -> "<sku> <from bucket> <units> <at ms>"
    ARGV[1] transfer id
    ARGV[2] giving bucket       integer 0..MAX_BUCKETS-1
    ARGV[3] units               integer 1..MAX_UNITS, as transfer_out answered
    ARGV[4] withdrawn at        ms, transfer_out's clock
    ARGV[5] deadline            ms after ARGV[4] past which this call refuses; 0: no deadline (the sweeper)
  Output:
    units deposited now; 0 when the receipt says it was deposited before
  Errors:
    INVALID_ARGUMENT   malformed arguments (nothing written)
    NOT_FOUND          no sale for this SKU in this bucket (nothing written)
    TRANSFER_LATE      past the deadline: left to the sweeper (nothing written)
  Event: ["transferred_in", sku, at, transfer id, from bucket, to bucket, units]
  Publishes: the SKU id on fs:{pN}:stock (units came: a sold-out flag must drop) (includes/stock.lua)
]]
--@include common
--@include events
--@include stock

local skuKey, stream, receipts = KEYS[1], KEYS[2], KEYS[3]
local tid = ARGV[1]
local prefix, sku = skuKeyParts(skuKey)

if rcall('HEXISTS', receipts, tid) == 1 then return 0 end
local from, n = parseCount(ARGV[2], MAX_BUCKETS - 1), parseCount(ARGV[3], MAX_UNITS)
local withdrawn, deadline = parseCount(ARGV[4], MAX_TIME_MS), parseCount(ARGV[5], MAX_TIME_MS)
if from == nil or n == nil or n < 1 or withdrawn == nil or deadline == nil or not string.match(tid, '^mv_%d+_[%w_-]+$') then
  return refuse('INVALID_ARGUMENT', 'malformed transfer')
end
local s = rcall('HMGET', skuKey, 'available', 'moved', 'bucket')
if not s[1] then return refuse('NOT_FOUND', 'no sale for sku ' .. sku .. ' in this bucket') end
local now = nowMs()
if deadline > 0 and now > withdrawn + deadline then
  return refuse('TRANSFER_LATE', 'transfer ' .. tid .. ' is older than ' .. deadline .. ' ms: the sweeper finishes it')
end

rcall('HSET', skuKey, 'available', int(tonumber(s[1]) + n), 'moved', int(tonumber(s[2] or 0) + n))
rcall('HSET', receipts, tid, sku .. ' ' .. from .. ' ' .. int(n) .. ' ' .. int(now))
emit(stream, 'transferred_in', sku, int(now), ',"' .. tid .. '",' .. from .. ',' .. (s[3] or '0') .. ',' .. int(n))
announceStock(prefix, sku)
return n
