--[[
  Depositing a stock-bucket transfer (engine/buckets.py): the units another bucket of the SKU withdrew
  for this one (lua/transfer_out.lua) come into this bucket's available, once, by the transfer's receipt.
  Used by lua/transfer_in.lua, and by lua/reserve.lua, which deposits and reserves in one step so that
  the shopper who moved the units is the first to take them.
]]
--@include common
--@include events

-- Deposits transfer `tid` (from bucket `fromArg`, `nArg` units withdrawn at `atArg` ms; `deadlineArg`: ms
-- after the withdrawal past which a caller other than the sweeper is refused, 0: none) into the bucket
-- whose hash is skuKey. Returns the units deposited (0: the receipt says it was deposited before), or an
-- error reply (nothing written): INVALID_ARGUMENT, NOT_FOUND, TRANSFER_LATE. Publishes the SKU id on the
-- partition's stock channel (includes/stock.lua says why), inline: reserve.lua has no stock include here.
local function depositTransfer(skuKey, stream, receipts, tid, fromArg, nArg, atArg, deadlineArg)
  if rcall('HEXISTS', receipts, tid) == 1 then return 0 end
  local prefix, sku = skuKeyParts(skuKey)
  local from, n = parseCount(fromArg, MAX_BUCKETS - 1), parseCount(nArg, MAX_UNITS)
  local withdrawn, deadline = parseCount(atArg, MAX_TIME_MS), parseCount(deadlineArg, MAX_TIME_MS)
  if from == nil or n == nil or n < 1 or withdrawn == nil or deadline == nil
    or not string.match(tid, '^mv_%d+_[%w_-]+$') then
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
  rcall('PUBLISH', prefix .. 'stock', sku)
  return n
end
