--[[
  The user lets go of a reservation: RESERVED -> CANCELLED, its units back to available.

  Input:
    KEYS[1] open holds           fs:{pN}:open   the partition's open reservation records
    KEYS[2] ended reservation    fs:{pN}:r:<reservation id>   (its record once it ended)
    KEYS[3] partition stream     fs:{pN}:events
    KEYS[4..] the reservation's SKU hash and holds (fs:{pN}:sku:<sku>, fs:{pN}:holds:<sku>), and the order
              of a lapsed payment it ends, once a NEEDS_KEYS reply named them
    ARGV[1] user id              the caller; must own the reservation
    ARGV[2] reservation id
  Output:
    the reservation's record (status CANCELLED; lua/includes/reservations.lua)
    error NEEDS_KEYS <key> ...   keys to write that are not in KEYS (nothing written): sent again with them
    error NOT_FOUND            no such reservation (nothing written)
    error FORBIDDEN            the reservation is another user's (nothing written)
    error INVALID_STATE        it is CONFIRMED or CANCELLED (nothing written)
    error RESERVATION_EXPIRED  its deadline (or its payment grace) has passed; if the sweeper had not ended
                               it yet, this script ends it as EXPIRED (event expired) before refusing
    error CHECKOUT_IN_PROGRESS a payment for it is in flight (nothing written)
  Event: ["released", sku, at, reservation id, user, quantity, null]
  Publishes: the SKU id on fs:{pN}:stock when the hold's units go back (includes/stock.lua)
]]
--@include common
--@include declared
--@include events
--@include holds

local stream = KEYS[3]
local user, rid = ARGV[1], ARGV[2]
local prefix = string.match(KEYS[1], '^(.*:)open$')

local r = readReservation(prefix, rid)
if not r then return refuse('NOT_FOUND', 'no reservation ' .. rid) end
if r.user ~= user then return refuse('FORBIDDEN', 'reservation ' .. rid .. ' belongs to another user') end
if r.status == 'EXPIRED' then return refuse('RESERVATION_EXPIRED', 'reservation ' .. rid .. ' has expired') end
if r.status ~= 'RESERVED' then return refuse('INVALID_STATE', 'reservation ' .. rid .. ' is ' .. r.status) end
local now = nowMs()
if not (r.order_id and now < deadline(r)) then  -- every path but CHECKOUT_IN_PROGRESS ends the hold
  local refusal = needKeys(holdKeys(prefix, rid, r))
  if refusal then return refusal end
end
if now >= deadline(r) then
  endHold(prefix, stream, rid, r, 'EXPIRED', 'expired', now)
  return refuse('RESERVATION_EXPIRED', 'reservation ' .. rid .. ' has expired')
end
if r.order_id then return refuse('CHECKOUT_IN_PROGRESS', 'order ' .. r.order_id .. ' is paying for ' .. rid) end

endHold(prefix, stream, rid, r, 'CANCELLED', 'released', now)
return packReservation(r)
