--[[
  Every key a script touches is one of its KEYS: Redis Cluster routes a call by them (and holds it, ASK or
  TRYAGAIN, while its slot migrates), but stops a script mid-way, its writes kept, at an undeclared key
  that has already moved ("non local key", seen on Redis 6.2 and Valkey). A script whose keys
  depend on what it reads (a reservation's SKU, an order's hold, the records and orders of lapsed holds,
  the idempotency generation of the server's clock) builds their names and, before its first write, asks
  for those it was not given with a NEEDS_KEYS error reply; the client sends the call again with them
  added (engine/client.py).
]]
--@include common

local declaredSet

local function declared(key)
  if #KEYS <= 16 then
    for i = 1, #KEYS do
      if KEYS[i] == key then return true end
    end
    return false
  end
  if not declaredSet then
    declaredSet = {}
    for i = 1, #KEYS do declaredSet[KEYS[i]] = true end
  end
  return declaredSet[key] == true
end

-- nil when each of `keys` is declared, else the NEEDS_KEYS reply naming those that are not.
local function needKeys(keys)
  local missing
  for i = 1, #keys do
    if not declared(keys[i]) then
      missing = missing or {}
      missing[#missing + 1] = keys[i]
    end
  end
  if missing then return redis.error_reply('NEEDS_KEYS ' .. table.concat(missing, ' ')) end
  return nil
end
