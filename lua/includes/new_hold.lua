--[[
  The text a new hold writes, in one place for the two scripts that grant one (reserve.lua's hold(),
  reserve_many.lua): its open record (an open hold's seven fields, includes/reservations.lua) and its
  event's JSON (the entry of includes/events.lua; engine/events.py's LAYOUT of "reserved"). The event's
  reservation id leaves out "rsv_<partition>_": the stream's partition says it (engine/events.py).
  Included where a grant is written rather than at a script's top, so that a refusal does not define them
  (Redis runs a script's whole body on every call).
]]
local function openHoldRecord(sku, user, qtyText, nowText, expiresText)
  return sku .. ' ' .. user .. ' ' .. qtyText .. ' ' .. nowText .. ' ' .. expiresText .. ' - 0'
end

local function reservedEvent(sku, nowText, rid, user, qtyText, ttlText)
  return '["reserved","' .. sku .. '",' .. nowText .. ',"' .. string.sub(rid, string.find(rid, '_', 5, true) + 1)
    .. '","' .. user .. '",' .. qtyText .. ',' .. ttlText .. ']'
end
