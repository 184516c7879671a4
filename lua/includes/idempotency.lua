--[[
  Idempotent answers: the first answer of a call made with an idempotency key, kept for at least the
  idempotency ttl. Answers live in generation hashes fs:{pN}:idem:<n>, n = floor(now / ttl), one field per
  answer ("<operation>:<scope>:<user>:<key>"); a repeat looks in this generation and the one before, and
  a generation expires two ttls after it began. One field in a shared hash costs far less than a key of
  its own with its own expiry (README, Performance). The two generations a call reads are among its KEYS
  (the client names them by its own clock; needAnswerKeys asks for them when the server's clock
  disagrees).
  A stored answer is a refusal ("!CODE message"), a reply array (JSON), or a plain reply string.
  reserve.lua's fast path keeps a keyed sold-out refusal the same way without these helpers (defining
  them costs every call of the hot path): a change to the generations, the field or the stored form here
  is a change there too (tests/engine/test_engine_idempotency.py pins the two to one answer).
]]
--@include common
--@include declared

-- The hashes a keyed call reads: this generation's (where remember writes) and the one before's.
local function answerKeys(prefix, ttl, now)
  local generation = math.floor(now / ttl)
  return prefix .. 'idem:' .. generation, prefix .. 'idem:' .. (generation - 1)
end

-- nil when both are among the call's KEYS (the client puts them last), else the NEEDS_KEYS reply.
local function needAnswerKeys(current, previous)
  local n = #KEYS
  if KEYS[n - 1] == current and KEYS[n] == previous then return nil end
  return needKeys({current, previous})
end

local function storedAnswer(current, previous, field)
  local stored = rcall('HGET', current, field) or rcall('HGET', previous, field)
  if not stored then return nil end
  local first = string.sub(stored, 1, 1)
  if first == '!' then return redis.error_reply(string.sub(stored, 2)) end
  if first == '[' then return cjson.decode(stored) end
  return stored
end

-- Remembers this call's answer (a reply string or array, or a refusal) under its field, then returns it.
local function remember(prefix, field, ttl, now, reply)
  if ttl > 0 then
    local stored
    if type(reply) == 'table' and reply.err then
      stored = '!' .. reply.err
    elseif type(reply) == 'table' then
      stored = cjson.encode(reply)
    else
      stored = reply
    end
    local generation = math.floor(now / ttl)
    local key = prefix .. 'idem:' .. generation
    rcall('HSET', key, field, stored)
    rcall('PEXPIREAT', key, (generation + 2) * ttl)
  end
  return reply
end
