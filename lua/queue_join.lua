--[[
  Puts a shopper in line for a SKU's sale, once: a repeat answers the place the shopper already has.
  A shopper who joins before the sale starts gets a random place among everyone who did (the caller
  draws it, so the script stays deterministic for replication): arriving a second before the start buys
  nothing over arriving ten minutes before. Later joiners queue in arrival order (2^48 + a counter), so
  every early joiner is ahead of every late one. Joins are not events: they change no stock, and a
  sale-start crowd would swamp the log with them (README, Waiting room).

  Input:
    KEYS[1] sku hash       fs:{pN}:sku:<sku>       sale and waiting-room settings
    KEYS[2] waiting room   fs:{pN}:wr:<sku>        hash: seq, joined, closed
    KEYS[3] line           fs:{pN}:wr:q:<sku>      zset user -> place
    KEYS[4] admitted       fs:{pN}:wr:a:<sku>      zset user -> admission deadline (negated once used)
    KEYS[5] joined at      fs:{pN}:wr:t:<sku>      hash user -> ms joined
    KEYS[6] left           fs:{pN}:wr:left:<sku>   zset user -> why they left
    KEYS[7] rate bucket    fs:{pN}:rl:<user>       the user's request rate (lua/includes/ratelimit.lua)
    ARGV[1] user id
    ARGV[2] early place    integer 0..LATE_PLACES-1, random: the place if the sale has not started
    ARGV[3] rate interval ms    ARGV[4] rate tolerance ms    (interval 0: no rate limit)
  Output:
    {status, position, line length, admission deadline ms, new, admit per s, starts at ms, now ms}
      status WAITING (position: 1-based, among everyone in line now) or ADMITTED (deadline set);
      new: 1 when this call made the place, 0 for a repeat
    error INVALID_ARGUMENT   bad user id or early place (nothing written)
    error NOT_FOUND          no sale for this SKU
    error NO_WAITING_ROOM    the sale has no waiting room
    error RATE_LIMITED       over the user's request rate (nothing written)
    error QUEUE_NOT_OPEN     before the waiting room opens
    error QUEUE_CLOSED       the SKU sold out (no unit available or held) or the sale ended
]]
--@include common
--@include ratelimit
--@include waiting_room

local skuKey, roomKey, queueKey, admittedKey, joinedKey, leftKey, rateKey =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local user = ARGV[1]
local early = parseCount(ARGV[2], LATE_PLACES - 1)
local _, sku = skuKeyParts(skuKey)

if not isIdentifier(user) then return refuse('INVALID_ARGUMENT', 'user id must be 1-128 letters, digits or -_.@') end
if early == nil then return refuse('INVALID_ARGUMENT', 'early place must be an integer below 2^48') end
local s = rcall('HMGET', skuKey, 'waiting_room', 'wr_opens_at', 'starts_at', 'ends_at', 'wr_rate', 'available',
  'reserved')
local refusal = roomRefusal(s[1], s[3], sku)
if refusal then return refusal end
local now = nowMs()
refusal = rateCheck(rateKey, now, ARGV[3], ARGV[4])
if refusal then return refusal end

local startsAt, endsAt = tonumber(s[3]), tonumber(s[4])
local status, place = standing(queueKey, admittedKey, leftKey, user, now)
if status == 'WAITING' or status == 'ADMITTED' then
  return standingReply(status, place, queueKey, 0, s[5], startsAt, now)
end
if endsAt > 0 and now >= endsAt then return refuse('QUEUE_CLOSED', 'the sale of sku ' .. sku .. ' has ended') end
if (tonumber(s[6]) == 0 and tonumber(s[7]) == 0) or rcall('HGET', roomKey, 'closed') then
  return refuse('QUEUE_CLOSED', 'sku ' .. sku .. ' is sold out')
end
if now < tonumber(s[2]) then
  return refuse('QUEUE_NOT_OPEN', 'the waiting room of sku ' .. sku .. ' opens at ' .. s[2] .. ' ms')
end

-- Checks done; writes follow. A shopper who left (lapsed, or sent away before stock came back) joins anew.
if status then
  rcall('ZREM', leftKey, user)
  rcall('ZREM', admittedKey, user)
end
local score = early
if now >= startsAt then score = LATE_PLACES + rcall('HINCRBY', roomKey, 'seq', 1) end
rcall('ZADD', queueKey, score, user)
rcall('HSET', joinedKey, user, now)
rcall('HINCRBY', roomKey, 'joined', 1)
return standingReply('WAITING', rcall('ZRANK', queueKey, user) + 1, queueKey, 1, s[5], startsAt, now)
