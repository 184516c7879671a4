--[[
  Shared by every script: the server clock, refusals, argument parsing, JSON for events.
  Needs: the generated bounds (engine/bounds.py).
]]
--@include bounds
local rcall = redis.call

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

-- An identifier (SKU, user): 1..128 of letters, digits and -_.@ (no spaces, no ':' key separator).
local function isIdentifier(s)
  return type(s) == 'string' and #s >= 1 and #s <= MAX_IDENTIFIER_CHARS and string.match(s, '^[%w%-_%.@]+$') ~= nil
end

-- An integer as decimal digits: Lua's own tostring turns 1e15 into "1e+15".
local function int(n)
  return string.format('%d', n)
end

-- JSON values for an event: an identifier needs no escaping, free text does.
local function jid(s)
  if s == nil then return 'null' end
  return '"' .. s .. '"'
end

local function jtext(s)
  if s == nil then return 'null' end
  return cjson.encode(s)
end

-- The partition prefix and the SKU id of a SKU key: "fs:{p3}:sku:PS5" -> "fs:{p3}:", "PS5" (a plain find:
-- no pattern matching on the hot path).
local function skuKeyParts(skuKey)
  local tagEnd = string.find(skuKey, '}:', 1, true) + 1
  return string.sub(skuKey, 1, tagEnd), string.sub(skuKey, tagEnd + 5)
end
