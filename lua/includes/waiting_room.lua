--[[
  A SKU's waiting room. Its settings are fields of the SKU hash (waiting_room = '1' when on, wr_opens_at,
  wr_rate, wr_stock_factor, wr_admission_ttl_ms: lua/set_waiting_room.lua), so reserve learns whether a
  sale has one from the read it makes anyway. Its state has keys of its own (engine/keys.py):
    fs:{pN}:wr:<sku>       hash  seq (late joiners' counter), tokens and tick_at (the admitter's bucket),
                                 closed (SOLD_OUT while the line is closed), counts, time in queue
    fs:{pN}:wr:q:<sku>     zset  the line: user -> place
    fs:{pN}:wr:a:<sku>     zset  admitted: user -> admission deadline ms, negated once a reservation used it
    fs:{pN}:wr:t:<sku>     hash  user -> ms they joined, while in line
    fs:{pN}:wr:left:<sku>  zset  user -> LEFT_SOLD_OUT (sent away when the SKU sold out) or
                                 LEFT_LAPSED (the admission lapsed unused)
]]
--@include common

local LEFT_SOLD_OUT, LEFT_LAPSED = 0, 1

-- The refusal of a SKU whose sale is missing (no starts_at read) or has no waiting room on; nil otherwise.
local function roomRefusal(on, startsAt, sku)
  if not startsAt then return refuse('NOT_FOUND', 'no sale for sku ' .. sku) end
  if on ~= '1' then return refuse('NO_WAITING_ROOM', 'the sale of sku ' .. sku .. ' has no waiting room') end
  return nil
end

-- Whether an admitted set's score is a live admission at `now` (used or not).
local function admissionLive(score, now)
  return score ~= nil and (score > now or -score > now)
end

-- Where a user stands: status and, per status, the position (WAITING, 1-based) or the admission's
-- deadline (ADMITTED, LAPSED); nil when the user has no place (never joined, or reserved and done).
local function standing(queueKey, admittedKey, leftKey, user, now)
  local a = rcall('ZSCORE', admittedKey, user)
  if a then
    a = tonumber(a)
    if admissionLive(a, now) then return 'ADMITTED', math.abs(a) end
    if a > 0 then return 'LAPSED', a end
  end
  local rank = rcall('ZRANK', queueKey, user)
  if rank then return 'WAITING', rank + 1 end
  local left = rcall('ZSCORE', leftKey, user)
  if left then return (tonumber(left) == LEFT_LAPSED and 'LAPSED' or 'SOLD_OUT'), 0 end
  return nil
end

-- The answer of queue_join and queue_status: what a shopper's page shows.
local function standingReply(status, place, queueKey, new, rate, startsAt, now)
  local position, deadline = 0, 0
  if status == 'WAITING' then position = place else deadline = place end
  return {status, position, rcall('ZCARD', queueKey), deadline, new, tonumber(rate) or 0, startsAt, now}
end
