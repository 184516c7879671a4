--[[
  The simulated payment gateway authorizes (or declines) one order's payment, once per order id: a repeat
  for the same order returns the first result unchanged, so two concurrent calls never authorize twice.
  The caller (writeback/payments.py) has decided the outcome; this script makes it the ledger's, atomically.
  An authorization stays on the unsettled list until it is captured or voided.

  Input:
    KEYS[1] payment             fs:{pN}:gw:<order id>   hash: the order's payment
    KEYS[2] unsettled list      fs:{pN}:gw:unsettled    zset: order id -> ms since its payment is not final
    KEYS[3] counts              fs:{pN}:gw:counts       hash: authorized declined captured voided refunded
    ARGV[1] order id
    ARGV[2] amount cents        integer >= 0
    ARGV[3] payment method
    ARGV[4] transaction id      the gateway's id for this payment
    ARGV[5] outcome             AUTHORIZED | DECLINED
    ARGV[6] decline reason      (read with DECLINED)
  Output:
    the payment as a flat field/value array: the one just made, or the first one made for this order.
    A hash holding only a review mark (gateway_transition.lua's review came before any authorization)
    is not a payment: the authorization is written into it and keeps the mark.
    error INVALID_ARGUMENT  malformed amount or outcome (nothing written)
]]
--@include common

local paymentKey, unsettledKey, countsKey = KEYS[1], KEYS[2], KEYS[3]
local orderId, amount, method, transactionId = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local outcome, declineReason = ARGV[5], ARGV[6]

if rcall('HEXISTS', paymentKey, 'status') == 1 then
  return rcall('HGETALL', paymentKey)
end
if not amount or amount < 0 or amount ~= math.floor(amount) or amount >= 2 ^ 53 then
  return refuse('INVALID_ARGUMENT', 'amount must be a whole number of cents')
end
if outcome ~= 'AUTHORIZED' and outcome ~= 'DECLINED' then
  return refuse('INVALID_ARGUMENT', 'outcome must be AUTHORIZED or DECLINED')
end

-- Checks done; writes follow.
local now = nowMs()
rcall('HSET', paymentKey, 'order_id', orderId, 'status', outcome, 'amount_cents', int(amount),
  'method', method, 'transaction_id', transactionId, 'created_at', now, 'updated_at', now)
if outcome == 'AUTHORIZED' then
  rcall('PERSIST', paymentKey)  -- a review mark expires; an authorization is kept until it is final
  rcall('ZADD', unsettledKey, now, orderId)
  rcall('HINCRBY', countsKey, 'authorized', 1)
else
  rcall('HSET', paymentKey, 'decline_reason', declineReason)
  rcall('PEXPIRE', paymentKey, RETENTION_MS)
  rcall('HINCRBY', countsKey, 'declined', 1)
end
return rcall('HGETALL', paymentKey)
