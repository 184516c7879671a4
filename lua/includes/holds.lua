-- Needs: rcall, RETENTION_MS (common), emit (events).
--@include common
--@include events
-- Ends an active hold: its units go back to available, the user's held count drops, the reservation
-- leaves both deadline sets and takes its final status (CANCELLED or EXPIRED). If a checkout was in
-- flight (an abandoned payment), that order becomes FAILED in the same step. Emits one event.
local function endHold(prefix, stream, rid, status, kind, now)
  local resKey = prefix .. 'res:' .. rid
  local r = rcall('HMGET', resKey, 'sku', 'user', 'quantity', 'order_id')
  local sku, user, qty, orderId = r[1], r[2], tonumber(r[3]), r[4]
  local skuKey = prefix .. 'sku:' .. sku
  rcall('HINCRBY', skuKey, 'reserved', -qty)
  rcall('HINCRBY', skuKey, 'available', qty)
  rcall('HINCRBY', prefix .. 'user:' .. sku .. ':' .. user, 'held', -qty)
  rcall('ZREM', prefix .. 'holds:' .. sku, rid)
  rcall('ZREM', prefix .. 'deadlines', rid)
  rcall('HSET', resKey, 'status', status, 'ended_at', now)
  rcall('HDEL', resKey, 'pay_until')
  rcall('PEXPIRE', resKey, RETENTION_MS)
  local extra = {'reservation_id', rid, 'user', user, 'quantity', qty, 'status', status}
  if orderId and orderId ~= '' then
    local orderKey = prefix .. 'order:' .. orderId
    rcall('HSET', orderKey, 'status', 'FAILED', 'failure_reason', 'CHECKOUT_TIMEOUT', 'updated_at', now)
    rcall('PEXPIRE', orderKey, RETENTION_MS)
    extra[#extra + 1] = 'order_id'
    extra[#extra + 1] = orderId
    extra[#extra + 1] = 'order_status'
    extra[#extra + 1] = 'FAILED'
  end
  emit(stream, kind, sku, now, qty, -qty, 0, 0, extra)
end

-- Ends up to `limit` holds of one deadline set whose deadline has passed; returns how many it ended.
local function expireDue(prefix, stream, deadlineKey, now, limit)
  local due = rcall('ZRANGEBYSCORE', deadlineKey, '-inf', now, 'LIMIT', 0, limit)
  local ended = 0
  for i = 1, #due do
    local rid = due[i]
    if rcall('HGET', prefix .. 'res:' .. rid, 'status') == 'RESERVED' then
      endHold(prefix, stream, rid, 'EXPIRED', 'expired', now)
      ended = ended + 1
    else
      -- Not an active hold any more (cannot happen through these scripts); drop the stale entry.
      rcall('ZREM', deadlineKey, rid)
    end
  end
  return ended
end
