--[[
  A SKU's sale as the clients read it. The SKU hash also holds each user's counts (h:<user>, b:<user>),
  so it is never read whole: SALE_FIELDS are the sale's own fields.
]]
--@include common

local SALE_FIELDS = {'sku', 'name', 'price_cents', 'flash_price_cents', 'total', 'available', 'reserved', 'sold',
  'per_user_limit', 'starts_at', 'ends_at', 'reservation_ttl_ms', 'paused', 'created_at', 'updated_at',
  'waiting_room', 'wr_opens_at', 'wr_rate', 'wr_stock_factor', 'wr_admission_ttl_ms', 'buckets'}

-- The sale as a flat field/value array.
local function saleReply(skuKey)
  local values = rcall('HMGET', skuKey, unpack(SALE_FIELDS))
  local reply = {}
  for i = 1, #SALE_FIELDS do
    reply[2 * i - 1] = SALE_FIELDS[i]
    reply[2 * i] = values[i]
  end
  return reply
end
