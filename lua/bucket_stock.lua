--[[
  What one bucket of a SKU has to give: its available units, when its first hold ends (a lapsed hold
  gives units back), and the units it gave that are still on their way to another bucket (withdrawn,
  the transfer not yet ended: a reader that finds no unit anywhere but some moving reads again rather
  than call the SKU sold out). Read by the engine before it moves units between buckets
  (engine/buckets.py); a script rather than reads so that all three come from one moment and one clock.

  Input:
    KEYS[1] bucket's sku hash   fs:{pN}:sku:<sku>
    KEYS[2] bucket's holds      fs:{pN}:holds:<sku>   (zset; lua/includes/holds.lua)
    KEYS[3] transfer ledger     fs:{pN}:moves:out   (few entries: only transfers under way)
    KEYS[4] bucket's holds list fs:{pN}:due:<sku>   (the first deadline is the earlier of the two heads)
  Output:
    {available, ms until the first hold ends (0: lapsed already) or -1 when none is held, units moving
     out of this bucket}
    {-1, -1, 0} when there is no sale for this SKU in this bucket
  Errors: none.
]]
local available = redis.call('HGET', KEYS[1], 'available')
if not available then return {-1, -1, 0} end
local moving = 0
local mine = string.sub(KEYS[1], string.find(KEYS[1], '}:', 1, true) + 6) .. ' '
local ledger = redis.call('HVALS', KEYS[3])
for i = 1, #ledger do
  if string.sub(ledger[i], 1, #mine) == mine then
    moving = moving + tonumber(string.match(ledger[i], ' (%d+) %d+$'))
  end
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2]
first = first and tonumber(first)
local head = redis.call('LINDEX', KEYS[4], 0)
head = head and tonumber(string.match(head, '^%d+'))
if head and (not first or head < first) then first = head end
if not first then return {tonumber(available), -1, moving} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = first - now
if ends < 0 then ends = 0 end
return {tonumber(available), ends, moving}
