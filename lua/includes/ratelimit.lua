--[[
  A user's request rate, kept in Redis so that it holds across every API process and machine: GCRA (a
  token bucket kept as one number, the moment the bucket would be full again), one string key per user
  per partition, fs:{pN}:rl:<user> (engine/keys.py), which expires when the bucket is full.
  The caller passes the rate as two numbers: the interval between requests at the steady rate
  (1000 / rate ms) and the tolerance (interval x (burst - 1) ms); an interval of 0 turns the check off.
  Needs nothing else (reserve.lua's fast path includes it before the shared helpers are defined).
]]

-- Spends one request of the user's bucket: nil when allowed (the bucket is written), else how many ms
-- until the next request would be (nothing written).
local function overRate(key, now, interval, tolerance)
  local tat = tonumber(redis.call('GET', key) or 0)
  if tat < now then tat = now end
  local wait = tat - tolerance - now
  if wait > 0 then return math.ceil(wait) end
  local nextTat = tat + interval
  redis.call('SET', key, string.format('%.3f', nextTat), 'PX', math.ceil(nextTat - now))
  return nil
end

-- The refusal of a request over the rate ("in <ms> ms" is read by engine/errors.py's RateLimited).
local function rateRefusal(wait)
  return redis.error_reply('RATE_LIMITED too many requests; the next one is allowed in ' .. string.format('%d', wait)
    .. ' ms')
end

-- The check of the scripts that take the rate as two ARGV strings (an interval of '0' or none: off): nil
-- when the request may go on, else its refusal.
local function rateCheck(key, now, interval, tolerance)
  interval = tonumber(interval) or 0
  if interval <= 0 then return nil end
  local wait = overRate(key, now, interval, tonumber(tolerance) or 0)
  if wait then return rateRefusal(wait) end
  return nil
end
