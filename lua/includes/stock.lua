--[[
  Announcing stock that came back. Every API process may answer OUT_OF_STOCK from memory once reserve
  has refused a SKU as sold out (api/soldout.py); a script that may turn such a refusal into a success
  (units back to available, a hold's deadline moved earlier, a sale's settings changed) publishes the
  SKU's id on its partition's channel fs:{pN}:stock (engine/keys.py) in the same atomic step as the
  change, and those processes drop their flag. Pub/sub, not a key: nothing is stored, and a process
  that misses a message keeps its flag at most its TTL (FLASHSALE_SOLDOUT_TTL_MS).
]]
--@include common

-- At most one message per SKU per script call (a sweep may end many holds of one SKU).
local stockAnnounced = {}

local function announceStock(prefix, sku)
  if stockAnnounced[sku] then return end
  stockAnnounced[sku] = true
  rcall('PUBLISH', prefix .. 'stock', sku)
end
