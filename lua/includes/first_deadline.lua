--[[
  The earliest deadline in a SKU's two holds indexes (lua/includes/holds.lua): the head of the holds list or
  of the sorted set, whichever is sooner; nil when both are empty. An entry the list still has of a hold
  that ended can only make it sooner, so it is at or before every open hold's deadline (what due_first
  must be: reserve.lua, reserve_many.lua).
]]
local function indexedFirstDeadline(dueListKey, holdsKey)
  local first = redis.call('LINDEX', dueListKey, '0')
  first = first and tonumber(string.match(first, '^%d+'))
  local reindexed = redis.call('ZRANGE', holdsKey, '0', '0', 'WITHSCORES')[2]
  reindexed = reindexed and tonumber(reindexed)
  if reindexed and (not first or reindexed < first) then return reindexed end
  return first
end
