--[[
  Ending holds. A SKU's open holds are the sorted set fs:{pN}:holds:<sku> (reservation id -> deadline);
  the user's held units are the field h:<user> of the SKU hash. Units going back on sale are announced
  on the partition's stock channel (includes/stock.lua). Ending a hold writes the keys holdKeys names:
  a script asks for them (needKeys, includes/common.lua) before it ends one.
]]
--@include common
--@include declared
--@include events
--@include reservations
--@include stock

-- The keys ending hold `rid` (record r) writes: its SKU's hash and holds, its record's two places, and
-- the order paying for it, if any.
local function holdKeys(prefix, rid, r)
  local keys = {prefix .. 'sku:' .. r.sku, prefix .. 'holds:' .. r.sku, openKey(prefix), endedKey(prefix, rid)}
  if r.order_id then keys[5] = prefix .. 'order:' .. r.order_id end
  return keys
end

-- An open hold's units go back on sale: reserved -> available, the user's held count drops (its field
-- goes when it reaches 0), the hold leaves its SKU's holds, and the SKU is announced (includes/stock.lua).
local function returnUnits(prefix, rid, r)
  local skuKey = prefix .. 'sku:' .. r.sku
  local heldField = 'h:' .. r.user
  local c = rcall('HMGET', skuKey, 'available', 'reserved', heldField)
  local held = tonumber(c[3] or 0) - r.quantity
  if held > 0 then
    rcall('HSET', skuKey, 'available', tonumber(c[1]) + r.quantity, 'reserved', tonumber(c[2]) - r.quantity,
      heldField, held)
  else
    rcall('HSET', skuKey, 'available', tonumber(c[1]) + r.quantity, 'reserved', tonumber(c[2]) - r.quantity)
    rcall('HDEL', skuKey, heldField)
  end
  rcall('ZREM', prefix .. 'holds:' .. r.sku, rid)
  announceStock(prefix, r.sku)
end

-- Ends an open hold: its units go back on sale and it takes its final status (CANCELLED or EXPIRED). If
-- a checkout was paying for it (an abandoned payment), that order becomes FAILED in the same step. Emits
-- one event.
local function endHold(prefix, stream, rid, r, status, kind, now)
  returnUnits(prefix, rid, r)
  r.status, r.ended_at, r.pay_until = status, now, 0
  writeReservation(prefix, rid, r)
  local orderId = r.order_id
  if orderId then
    local orderKey = prefix .. 'order:' .. orderId
    rcall('HSET', orderKey, 'status', 'FAILED', 'failure_reason', 'CHECKOUT_TIMEOUT', 'updated_at', now)
    rcall('PEXPIRE', orderKey, RETENTION_MS)
  end
  emit(stream, kind, r.sku, now, ',"' .. rid .. '","' .. r.user .. '",' .. r.quantity .. ',' .. jid(orderId))
end

-- Up to `limit` holds of one SKU whose deadline has passed, as {rid, record or nil}, and the keys that
-- endLapsed writes for them (to be declared first). Reads only the SKU's holds and the open hash.
local function lapsedHolds(prefix, sku, now, limit)
  local due = rcall('ZRANGEBYSCORE', prefix .. 'holds:' .. sku, '-inf', now, 'LIMIT', 0, limit)
  local lapsed, keys = {}, {prefix .. 'sku:' .. sku, prefix .. 'holds:' .. sku, openKey(prefix)}
  for i = 1, #due do
    local rid = due[i]
    local r = readOpenReservation(prefix, rid)
    lapsed[i] = {rid, r}
    if r and deadline(r) <= now then
      keys[#keys + 1] = endedKey(prefix, rid)
      if r.order_id then keys[#keys + 1] = prefix .. 'order:' .. r.order_id end
    end
  end
  return lapsed, keys
end

-- Ends the holds lapsedHolds found, in the same script; returns how many it ended.
local function endLapsed(prefix, stream, sku, lapsed, now)
  local holdsKey = prefix .. 'holds:' .. sku
  local ended = 0
  for i = 1, #lapsed do
    local rid, r = lapsed[i][1], lapsed[i][2]
    if r and deadline(r) <= now then
      endHold(prefix, stream, rid, r, 'EXPIRED', 'expired', now)
      ended = ended + 1
    elseif r then
      rcall('ZADD', holdsKey, deadline(r), rid)  -- a stale score (cannot happen through these scripts)
    else
      rcall('ZREM', holdsKey, rid)  -- not an open hold any more (cannot happen through these scripts)
    end
  end
  return ended
end
