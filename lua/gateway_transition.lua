--[[
  Moves one order's payment at the simulated payment gateway. Every move is idempotent (a repeat of a move
  already made changes nothing and answers ok), and a move the payment's state does not allow changes
  nothing and answers refused: a voided authorization is never captured, a capture is never voided.

    capture   AUTHORIZED -> CAPTURED   leaves the unsettled list, unless it is under review
    void      AUTHORIZED -> VOIDED     leaves the list; final
    refund    CAPTURED   -> REFUNDED   leaves the list; final
    review    AUTHORIZED | CAPTURED stay as they are, marked under review (since now) and listed: the order
              is about to be cancelled, so a void or refund may be due, and settlement must look even if
              the canceller never gets to it. With no payment yet, the mark waits for the authorization
              (expiring after the retention period). A final payment needs no review: ok, nothing written.
    finalize  CAPTURED: the capture stands, its review is over; leaves the list. Refused for an
              authorization (never final); ok and nothing written for a final payment.

  Input:
    KEYS[1] payment             fs:{pN}:gw:<order id>   hash: the order's payment
    KEYS[2] unsettled list      fs:{pN}:gw:unsettled    zset: order id -> ms since its payment is not final
    KEYS[3] counts              fs:{pN}:gw:counts       hash: authorized declined captured voided refunded
    ARGV[1] order id
    ARGV[2] move                capture | void | refund | review | finalize
  Output:
    {outcome, field, value, ...}: outcome 'ok' | 'refused', then the payment as it is now
    {'none'}                    no payment for this order (nothing written but review's mark)
    error INVALID_ARGUMENT      unknown move (nothing written)
]]
--@include common

local paymentKey, unsettledKey, countsKey = KEYS[1], KEYS[2], KEYS[3]
local orderId, move = ARGV[1], ARGV[2]

local FINAL = {DECLINED = true, VOIDED = true, REFUNDED = true}

local function answer(outcome)
  local payment = rcall('HGETALL', paymentKey)
  table.insert(payment, 1, outcome)
  return payment
end

if move ~= 'capture' and move ~= 'void' and move ~= 'refund' and move ~= 'review' and move ~= 'finalize' then
  return refuse('INVALID_ARGUMENT', 'unknown move ' .. tostring(move))
end
local p = rcall('HMGET', paymentKey, 'status', 'review_since')
local status, reviewSince = p[1], tonumber(p[2] or 0)
local now = nowMs()

if not status then
  if move == 'review' and rcall('HSETNX', paymentKey, 'review_since', now) == 1 then
    rcall('PEXPIRE', paymentKey, RETENTION_MS)
  end
  return {'none'}
end

-- A void or refund: final, off the list, kept for the retention period.
local function finish(to, counter)
  rcall('HSET', paymentKey, 'status', to, 'updated_at', now, 'review_since', 0)
  rcall('ZREM', unsettledKey, orderId)
  rcall('HINCRBY', countsKey, counter, 1)
  rcall('PEXPIRE', paymentKey, RETENTION_MS)
  return answer('ok')
end

if move == 'capture' then
  if status == 'CAPTURED' then return answer('ok') end
  if status ~= 'AUTHORIZED' then return answer('refused') end
  rcall('HSET', paymentKey, 'status', 'CAPTURED', 'updated_at', now)
  if reviewSince == 0 then rcall('ZREM', unsettledKey, orderId) end
  rcall('HINCRBY', countsKey, 'captured', 1)
  return answer('ok')
elseif move == 'void' then
  if status == 'VOIDED' then return answer('ok') end
  if status ~= 'AUTHORIZED' then return answer('refused') end
  return finish('VOIDED', 'voided')
elseif move == 'refund' then
  if status == 'REFUNDED' then return answer('ok') end
  if status ~= 'CAPTURED' then return answer('refused') end
  return finish('REFUNDED', 'refunded')
elseif move == 'review' then
  if FINAL[status] then return answer('ok') end
  rcall('HSET', paymentKey, 'review_since', now)
  rcall('ZADD', unsettledKey, 'NX', now, orderId)
  return answer('ok')
end
-- finalize
if status == 'AUTHORIZED' then return answer('refused') end
if status == 'CAPTURED' then
  rcall('HSET', paymentKey, 'review_since', 0)
  rcall('ZREM', unsettledKey, orderId)
end
return answer('ok')
