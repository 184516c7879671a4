--[[
  Withdraws units from one bucket of a SKU whose stock is split into buckets on different partitions
  (a hot SKU: engine/buckets.py), the first of a transfer's three steps: transfer_out here, transfer_in
  on the receiving bucket, transfer_done here. The units leave this bucket's available and are counted
  as moving; the ledger entry names where they go, so that a crash between the steps loses nothing:
  the sweeper finishes a transfer older than its grace (engine/buckets.py, finish_transfers). Like a
  refused reserve, a bucket with fewer units than asked first ends its holds whose deadline has passed
  (at most ARGV[4]): a lapsed hold in any bucket gives its units back to whoever needs them.

  Input:
    KEYS[1] bucket's sku hash   fs:{pN}:sku:<sku>   (available, moved: net units moved in, minus out)
    KEYS[2] partition stream    fs:{pN}:events
    KEYS[3] transfer ledger     fs:{pN}:moves:out   transfer id -> "<sku> <to bucket> <units> <at ms>"
    KEYS[4] bucket's holds      fs:{pN}:holds:<sku>   (zset; lua/includes/holds.lua)
    KEYS[5] open holds          fs:{pN}:open
    KEYS[6] bucket's holds list fs:{pN}:due:<sku>   (and any keys a NEEDS_KEYS reply named: the records
                                and orders of lapsed holds to end)
    ARGV[1] transfer id         mv_<partition>_<random>
    ARGV[2] receiving bucket    integer 0..MAX_BUCKETS-1, not this bucket's own
    ARGV[3] most units          integer 1..MAX_UNITS: withdraw up to this many
    ARGV[4] lazy expiry bound   how many lapsed holds of this bucket to end first when it has too few
  Output:
    {units withdrawn, at ms}    {0, 0} when the bucket has no unit available (nothing written but lapsed holds ended); a
                                repeat of a transfer id answers its first withdrawal again
  Errors:
    INVALID_ARGUMENT   malformed transfer id, bucket or count; the bucket is the SKU's only one or
                       is the receiver (nothing written)
    NOT_FOUND          no sale for this SKU in this bucket (nothing written)
    NEEDS_KEYS <key> ...   the records and orders of lapsed holds to end (nothing written)
  Event: ["transferred_out", sku, at, transfer id, from bucket, to bucket, units]; before it, one
         "expired" event per lapsed hold it ended (lua/includes/holds.lua)
]]
--@include common
--@include events
--@include holds

local skuKey, stream, ledger = KEYS[1], KEYS[2], KEYS[3]
local tid = ARGV[1]
local prefix, sku = skuKeyParts(skuKey)

local earlier = rcall('HGET', ledger, tid)
if earlier then
  local n, at = string.match(earlier, ' (%d+) (%d+)$')
  return {tonumber(n), tonumber(at)}
end
if not string.match(tid, '^mv_%d+_[%w_-]+$') or #tid > 80 then
  return refuse('INVALID_ARGUMENT', 'transfer id must be mv_<partition>_<letters, digits, -_>')
end
local to, most = parseCount(ARGV[2], MAX_BUCKETS - 1), parseCount(ARGV[3], MAX_UNITS)
if to == nil or most == nil or most < 1 then
  return refuse('INVALID_ARGUMENT', 'receiving bucket and units must be integers in range')
end
local s = rcall('HMGET', skuKey, 'available', 'buckets', 'bucket', 'moved')
if not s[1] then return refuse('NOT_FOUND', 'no sale for sku ' .. sku .. ' in this bucket') end
local buckets, from = tonumber(s[2] or 1), tonumber(s[3] or 0)
if buckets < 2 or to >= buckets or to == from then
  return refuse('INVALID_ARGUMENT', 'bucket ' .. to .. ' cannot receive from bucket ' .. from .. ' of ' .. buckets)
end
local available, moved = tonumber(s[1]), tonumber(s[4] or 0)
local now = nowMs()
if available < most then
  local lapsed, keys = lapsedHolds(prefix, sku, now, tonumber(ARGV[4]) or 0)
  if #lapsed > 0 or lapsed.popped > 0 then
    local refusal = needKeys(keys)
    if refusal then return refusal end
    if endLapsed(prefix, stream, sku, lapsed, now) > 0 then
      available = tonumber(rcall('HGET', skuKey, 'available'))
    end
  end
end
local n = math.min(most, available)
if n < 1 then return {0, 0} end

rcall('HSET', skuKey, 'available', int(available - n), 'moved', int(moved - n))
rcall('HSET', ledger, tid, sku .. ' ' .. to .. ' ' .. int(n) .. ' ' .. int(now))
emit(stream, 'transferred_out', sku, int(now), ',"' .. tid .. '",' .. from .. ',' .. to .. ',' .. int(n))
return {n, now}
