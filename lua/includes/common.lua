-- Shared by every script: the server clock, refusals, argument parsing, idempotent answers.
local rcall = redis.call

-- Terminal reservations and orders stay readable in Redis this long; PostgreSQL keeps them for good.
local RETENTION_MS = 7 * 24 * 3600 * 1000

-- Milliseconds since the epoch from the server's clock: the one clock every deadline is measured on.
local function nowMs()
  local t = rcall('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A business refusal: a stable code first, then a sentence for people.
local function refuse(code, message)
  return redis.error_reply(code .. ' ' .. message)
end

-- A non-negative decimal integer no larger than max; nil for anything else ("1e3", "-1", "", "1.5").
local function parseCount(s, max)
  if type(s) ~= 'string' or #s > 15 or not string.match(s, '^%d+$') then return nil end
  local n = tonumber(s)
  if n > max then return nil end
  return n
end

-- A signed decimal integer whose magnitude is at most max; nil for anything else.
local function parseSigned(s, max)
  if type(s) ~= 'string' or #s > 16 or not string.match(s, '^-?%d+$') then return nil end
  local n = tonumber(s)
  if n > max or n < -max then return nil end
  return n
end

-- An identifier: 1..128 printable characters without spaces or the key separator ':'.
local function isIdentifier(s)
  return type(s) == 'string' and #s >= 1 and #s <= 128 and string.match(s, '^[%w%-_%.@]+$') ~= nil
end

-- The stored answer of an earlier call made with the same idempotency key (ttl 0: no key given).
local function storedAnswer(idemKey, ttl)
  if ttl == 0 then return nil end
  local stored = rcall('GET', idemKey)
  if not stored then return nil end
  local answer = cjson.decode(stored)
  if answer.err then return redis.error_reply(answer.err) end
  return answer.ok
end

-- Remembers this call's answer (a reply array or a refusal) under its idempotency key, then returns it.
local function answer(idemKey, ttl, reply)
  if ttl > 0 then
    local stored
    if type(reply) == 'table' and reply.err then
      stored = cjson.encode({err = reply.err})
    else
      stored = cjson.encode({ok = reply})
    end
    rcall('SET', idemKey, stored, 'PX', ttl)
  end
  return reply
end

-- A hash as a flat field/value array, the shape every script returns for an entity.
local function entity(key)
  return rcall('HGETALL', key)
end
