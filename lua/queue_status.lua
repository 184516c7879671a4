--[[
  Where a shopper stands in a SKU's waiting room: the place in line, or admitted (until when), or sent
  away (SOLD_OUT), or an admission that lapsed unused (LAPSED), or ENDED once the sale is over.

  Input:
    KEYS[1] sku hash       fs:{pN}:sku:<sku>
    KEYS[2] line           fs:{pN}:wr:q:<sku>
    KEYS[3] admitted       fs:{pN}:wr:a:<sku>
    KEYS[4] left           fs:{pN}:wr:left:<sku>
    KEYS[5] rate bucket    fs:{pN}:rl:<user>
    ARGV[1] user id
    ARGV[2] rate interval ms    ARGV[3] rate tolerance ms    (interval 0: no rate limit)
  Output:
    {status, position, line length, admission deadline ms, 0, admit per s, starts at ms, now ms}
      status WAITING | ADMITTED | LAPSED | SOLD_OUT | ENDED
    error INVALID_ARGUMENT   bad user id
    error NOT_FOUND          no sale for this SKU
    error NO_WAITING_ROOM    the sale has no waiting room
    error RATE_LIMITED       over the user's request rate
    error NOT_IN_QUEUE       the user has no place (never joined, or reserved and the admission ended)
  Writes only the user's rate bucket.
]]
--@include common
--@include ratelimit
--@include waiting_room

local skuKey, queueKey, admittedKey, leftKey, rateKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local user = ARGV[1]
local _, sku = skuKeyParts(skuKey)

if not isIdentifier(user) then return refuse('INVALID_ARGUMENT', 'user id must be 1-128 letters, digits or -_.@') end
local s = rcall('HMGET', skuKey, 'waiting_room', 'starts_at', 'ends_at', 'wr_rate')
local refusal = roomRefusal(s[1], s[2], sku)
if refusal then return refusal end
local now = nowMs()
refusal = rateCheck(rateKey, now, ARGV[2], ARGV[3])
if refusal then return refusal end

local status, place = standing(queueKey, admittedKey, leftKey, user, now)
if not status then return refuse('NOT_IN_QUEUE', 'user has no place in the waiting room of sku ' .. sku) end
local endsAt = tonumber(s[3])
if status == 'WAITING' and endsAt > 0 and now >= endsAt then status, place = 'ENDED', 0 end
return standingReply(status, place, queueKey, 0, s[4], tonumber(s[2]), now)
