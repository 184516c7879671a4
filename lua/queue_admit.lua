--[[
  One step of a sale's admitter (the worker's writeback/admitter.py runs it about ten times a second for
  each waiting room whose lease it holds): ends lapsed admissions, then lets the next shoppers in at the
  room's rate, a token bucket kept here (tokens, tick_at), so a restarted or new admitter carries on
  where the last one stopped. It admits nobody before the start, after the end, while paused, or while
  no unit is available; when the SKU is sold out for good (no unit available and none held: a hold could
  still come back) it sends everyone in line away (they read SOLD_OUT) and closes the line, which opens
  again when stock comes back. With a stock factor, at most factor x available shoppers are admitted and
  not yet reserving at once.

  Input:
    KEYS[1] sku hash          fs:{pN}:sku:<sku>
    KEYS[2] waiting room      fs:{pN}:wr:<sku>
    KEYS[3] line              fs:{pN}:wr:q:<sku>
    KEYS[4] admitted          fs:{pN}:wr:a:<sku>
    KEYS[5] joined at         fs:{pN}:wr:t:<sku>
    KEYS[6] left              fs:{pN}:wr:left:<sku>
    KEYS[7] partition stream  fs:{pN}:events
    KEYS[8] admitter lease    fs:{pN}:wr:lease:<sku>   string: the worker id holding it
    ARGV[1] worker id         only the lease holder admits (a stalled admitter that lost it does nothing)
    ARGV[2] batch             integer 1..MAX_ADMIT_BATCH: the most shoppers admitted, or lapses ended, per step
  Output:
    {outcome, admitted now, line length after, sent away now}
      outcome LEASE_LOST | OFF | NOT_STARTED | ENDED | PAUSED | WAITING_FOR_STOCK | SOLD_OUT | ADMITTING
    error INVALID_ARGUMENT   malformed batch (nothing written)
  Events: ["queue_admitted", sku, at, count, users]   users: the JSON array of those let in by this step
          ["queue_closed", sku, at, count]                  the shoppers sent away, sold out
]]
--@include common
--@include events
--@include waiting_room
--@include queue_wait_buckets

local skuKey, roomKey, queueKey, admittedKey, joinedKey, leftKey, stream, leaseKey =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local batch = parseCount(ARGV[2], MAX_ADMIT_BATCH)
local _, sku = skuKeyParts(skuKey)
if batch == nil or batch < 1 then
  return refuse('INVALID_ARGUMENT', 'batch must be an integer from 1 to ' .. MAX_ADMIT_BATCH)
end
if rcall('GET', leaseKey) ~= ARGV[1] then return {'LEASE_LOST', 0, 0, 0} end
local s = rcall('HMGET', skuKey, 'waiting_room', 'starts_at', 'ends_at', 'paused', 'available', 'reserved', 'wr_rate',
  'wr_stock_factor', 'wr_admission_ttl_ms')
if s[1] ~= '1' then return {'OFF', 0, rcall('ZCARD', queueKey), 0} end

local now = nowMs()
local nowText = tostring(now)
local startsAt, endsAt = tonumber(s[2]), tonumber(s[3])
local available, reserved = tonumber(s[5]), tonumber(s[6])

-- Lapsed admissions: unused ones leave as LAPSED (the shopper may join again), used ones are done.
local lapsed = rcall('ZRANGEBYSCORE', admittedKey, '(0', now, 'LIMIT', 0, batch)
for _, user in ipairs(lapsed) do
  rcall('ZADD', leftKey, LEFT_LAPSED, user)
  rcall('ZREM', admittedKey, user)
end
if #lapsed > 0 then rcall('HINCRBY', roomKey, 'lapsed', #lapsed) end
local done = rcall('ZREMRANGEBYSCORE', admittedKey, -now, '(0')
if done > 0 then rcall('HINCRBY', roomKey, 'used', done) end

local line = rcall('ZCARD', queueKey)
local function idle(outcome)
  rcall('HSET', roomKey, 'tick_at', nowText)
  return {outcome, 0, line, 0}
end
if endsAt > 0 and now >= endsAt then return idle('ENDED') end
if now < startsAt then return idle('NOT_STARTED') end

if available == 0 and reserved == 0 then
  -- Sold out for good: everyone in line is told, and leaves it. Joins are refused until stock comes back.
  if line > 0 then
    rcall('ZUNIONSTORE', leftKey, 2, leftKey, queueKey, 'WEIGHTS', 1, 0, 'AGGREGATE', 'MIN')
    rcall('DEL', queueKey, joinedKey)
    rcall('HINCRBY', roomKey, 'sent_away', line)
    emit(stream, 'queue_closed', sku, nowText, ',' .. line)
  end
  rcall('HSET', roomKey, 'closed', 'SOLD_OUT', 'tokens', 0, 'tick_at', nowText)
  return {'SOLD_OUT', 0, 0, line}
end
rcall('HDEL', roomKey, 'closed')
if s[4] == '1' or available == 0 then
  -- Nobody can reserve now: the bucket does not fill meanwhile.
  rcall('HSET', roomKey, 'tokens', 0, 'tick_at', nowText)
  return {s[4] == '1' and 'PAUSED' or 'WAITING_FOR_STOCK', 0, line, 0}
end

-- The token bucket: `rate` tokens a second since the last step (or the start), at most a second's worth.
local rate, factor, ttl = tonumber(s[7]), tonumber(s[8]), tonumber(s[9])
local bucket = rcall('HMGET', roomKey, 'tokens', 'tick_at')
local tokens, last = tonumber(bucket[1] or 0), tonumber(bucket[2] or 0)
if last < startsAt then last = startsAt end
tokens = math.min(math.max(rate, 1), tokens + (now - last) * rate / 1000)
local n = math.min(math.floor(tokens), batch, line)
if factor > 0 then
  n = math.min(n, factor * available - rcall('ZCOUNT', admittedKey, '(' .. nowText, '+inf'))
end
if n <= 0 then
  rcall('HSET', roomKey, 'tokens', string.format('%.6f', tokens), 'tick_at', nowText)
  return {'ADMITTING', 0, line, 0}
end

-- Checks done: the first n in line are admitted until now + ttl.
local popped = rcall('ZPOPMIN', queueKey, n)
local deadline = now + ttl
local users, waited, buckets = {}, 0, {}
for i = 1, #popped, 2 do
  local user = popped[i]
  users[#users + 1] = user
  rcall('ZADD', admittedKey, deadline, user)
  local joined = tonumber(rcall('HGET', joinedKey, user) or now)
  local wait = now - math.max(joined, startsAt)
  waited = waited + wait
  local field = 'w:inf'
  for _, bound in ipairs(QUEUE_WAIT_BUCKETS_S) do
    if wait <= bound * 1000 then field = 'w:' .. bound break end
  end
  buckets[field] = (buckets[field] or 0) + 1
end
rcall('HDEL', joinedKey, unpack(users))
for field, count in pairs(buckets) do rcall('HINCRBY', roomKey, field, count) end
rcall('HINCRBY', roomKey, 'admitted', #users)
rcall('HINCRBY', roomKey, 'wait_ms', waited)
rcall('HSETNX', roomKey, 'first_admitted_at', nowText)
rcall('HSET', roomKey, 'tokens', string.format('%.6f', tokens - #users), 'tick_at', nowText, 'admitted_at', nowText)
emit(stream, 'queue_admitted', sku, nowText, ',' .. #users .. ',' .. cjson.encode(users))
return {'ADMITTING', #users, line - #users, 0}
