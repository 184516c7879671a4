--[[
  Ending holds. A SKU's open holds are indexed by deadline in two places:
    fs:{pN}:due:<sku>    list  "<deadline ms> <reservation id>", appended by reserve in the order holds are
                               made, so deadlines never decrease along it (a hold whose deadline would
                               come before the last one's goes to the sorted set instead: reserve
                               compares with due_last in the SKU hash, a deadline at or after the
                               last entry's, written with each append). ~39 bytes an
                               entry against ~113 for a sorted-set member (an append costs about what
                               the ZADD did); entries of holds that ended or whose deadline moved stay
                               until the head reaches them.
    fs:{pN}:holds:<sku>  zset  reservation id -> deadline: holds whose deadline is not their list entry's
                               (a checkout's payment grace, a payment failed back to the hold's expiry,
                               a hold out of list order, holds rebuilt by a repair).
  Every open hold has an entry, in one or the other, at or before its deadline: the first deadline of a
  SKU is at or after the earlier of the two heads. The SKU hash's due_first is a bound at or before every
  open hold's deadline, which reserve.lua's sold-out refusal trusts while it is ahead: a script that gives
  a hold an earlier deadline than due_first lowers it (reserve, fail_checkout). The user's held units are
  the field h:<user> of the SKU hash. Units going back on sale are announced on the partition's stock channel (includes/stock.lua).
  Ending a hold writes the keys holdKeys names: a script asks for them (needKeys, includes/common.lua)
  before it ends one.
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

local function dueKey(prefix, sku)
  return prefix .. 'due:' .. sku
end

-- Entries of the holds list one call may read beyond those of the holds it ends: entries left by holds
-- that ended or whose deadline moved (they go, and do not count against the caller's limit).
local LEFT_ENTRIES_PER_CALL = 64

-- Up to `limit` holds of one SKU whose deadline has passed, found through its two indexes, as {rid,
-- record or nil, whether the sorted set lists it} (entries of holds that ended or moved included, to be
-- dropped), and the keys that endLapsed writes for them (to be declared first). `lapsed.ending` counts
-- the holds to end (at most `limit`); `lapsed.popped` the list entries read off its head (endLapsed
-- removes them). Reads only the SKU's two indexes and the open hash.
local function lapsedHolds(prefix, sku, now, limit)
  local holdsKey, queueKey = prefix .. 'holds:' .. sku, dueKey(prefix, sku)
  local lapsed, keys = {popped = 0, ending = 0}, {prefix .. 'sku:' .. sku, holdsKey, queueKey, openKey(prefix)}
  local seen = {}
  local function add(rid, inSet)
    if seen[rid] then return end
    seen[rid] = true
    local r = readOpenReservation(prefix, rid)
    lapsed[#lapsed + 1] = {rid, r, inSet}
    if r and deadline(r) <= now then
      lapsed.ending = lapsed.ending + 1
      keys[#keys + 1] = endedKey(prefix, rid)
      if r.order_id then keys[#keys + 1] = prefix .. 'order:' .. r.order_id end
    end
  end
  if limit < 1 then return lapsed, keys end
  local due = rcall('ZRANGEBYSCORE', holdsKey, '-inf', now, 'LIMIT', 0, limit)
  for i = 1, #due do add(due[i], true) end
  -- The list's head, read in growing chunks (1, 8, 64 entries): the sweeper looks at every SKU of its
  -- partition several times a second, and mostly finds nothing due (one entry read, not a whole batch).
  local cap, chunk = limit + LEFT_ENTRIES_PER_CALL, 1
  while lapsed.ending < limit and lapsed.popped < cap do
    local size = math.min(chunk, cap - lapsed.popped)
    local queued = rcall('LRANGE', queueKey, lapsed.popped, lapsed.popped + size - 1)
    for i = 1, #queued do
      local at, rid = string.match(queued[i], '^(%d+) (%S+)$')
      if at and tonumber(at) > now then return lapsed, keys end
      lapsed.popped = lapsed.popped + 1
      if rid then add(rid, false) end
      if lapsed.ending >= limit then return lapsed, keys end
    end
    if #queued < size then break end
    chunk = chunk * 8
  end
  return lapsed, keys
end

-- Ends the holds lapsedHolds found, in the same script; returns how many it ended. An entry whose hold
-- ended already goes; one whose hold's deadline is still ahead is put in the sorted set at it.
local function endLapsed(prefix, stream, sku, lapsed, now)
  local holdsKey = prefix .. 'holds:' .. sku
  local ended = 0
  for i = 1, #lapsed do
    local rid, r, inSet = lapsed[i][1], lapsed[i][2], lapsed[i][3]
    if r and deadline(r) <= now then
      endHold(prefix, stream, rid, r, 'EXPIRED', 'expired', now)
      ended = ended + 1
    elseif r then
      rcall('ZADD', holdsKey, deadline(r), rid)  -- its deadline moved (a checkout's grace): indexed at it
    elseif inSet then
      rcall('ZREM', holdsKey, rid)  -- not an open hold any more (cannot happen through these scripts)
    end  -- else a list entry of a hold that ended: it goes with the list's head, below
  end
  if lapsed.popped > 0 then rcall('LTRIM', dueKey(prefix, sku), lapsed.popped, -1) end
  return ended
end
