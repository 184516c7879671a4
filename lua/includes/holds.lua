--[[
  Ending holds. A SKU's open holds are the sorted set fs:{pN}:holds:<sku> (reservation id -> deadline);
  the user's held units are the field h:<user> of the SKU hash. Units going back on sale are announced
  on the partition's stock channel (includes/stock.lua).
]]
--@include common
--@include events
--@include reservations
--@include stock

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

-- Ends up to `limit` holds of one SKU whose deadline has passed; returns how many it ended.
local function expireDue(prefix, stream, sku, now, limit)
  local holdsKey = prefix .. 'holds:' .. sku
  local due = rcall('ZRANGEBYSCORE', holdsKey, '-inf', now, 'LIMIT', 0, limit)
  local ended = 0
  for i = 1, #due do
    local rid = due[i]
    local r = readReservation(prefix, rid)
    if r and r.status == 'RESERVED' and deadline(r) <= now then
      endHold(prefix, stream, rid, r, 'EXPIRED', 'expired', now)
      ended = ended + 1
    elseif r and r.status == 'RESERVED' then
      rcall('ZADD', holdsKey, deadline(r), rid)  -- a stale score (cannot happen through these scripts)
    else
      rcall('ZREM', holdsKey, rid)  -- not an open hold any more (cannot happen through these scripts)
    end
  end
  return ended
end
