--[[
  What one bucket of a SKU has to give: its available units and when its first hold ends (a lapsed
  hold gives units back). Read by the engine before it moves units between buckets (engine/buckets.py);
  a script rather than two reads so that both come from one moment and one clock.

  Input:
    KEYS[1] bucket's sku hash   fs:{pN}:sku:<sku>
    KEYS[2] bucket's holds      fs:{pN}:holds:<sku>
  Output:
    {available, ms until the first hold ends (0: lapsed already), or -1 when none is held}
    {-1, -1} when there is no sale for this SKU in this bucket
  Errors: none.
]]
local available = redis.call('HGET', KEYS[1], 'available')
if not available then return {-1, -1} end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2]
if not first then return {tonumber(available), -1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = tonumber(first) - now
if ends < 0 then ends = 0 end
return {tonumber(available), ends}
