--[[
  The user lets go of a reservation: RESERVED -> CANCELLED, its units back to available.

  Input:
    KEYS[1] reservation          fs:{pN}:res:<reservation id>
    KEYS[2] partition stream     fs:{pN}:events
    ARGV[1] key prefix of the partition  fs:{pN}:
    ARGV[2] user id              the caller; must own the reservation
    ARGV[3] reservation id
  Output:
    the reservation as a flat field/value array (status CANCELLED)
    error NOT_FOUND            no such reservation (nothing written)
    error FORBIDDEN            the reservation is another user's (nothing written)
    error CHECKOUT_IN_PROGRESS a payment for it is in flight (nothing written)
    error INVALID_STATE        it is CONFIRMED or CANCELLED (nothing written)
    error RESERVATION_EXPIRED  its deadline has passed; if the sweeper had not ended it yet, this script
                               ends it as EXPIRED (units back to available, event expired) before refusing
  Event: released (available +q, reserved -q)
]]
--@include common
--@include events
--@include holds

local resKey = KEYS[1]
local stream = KEYS[2]
local prefix = ARGV[1]
local user = ARGV[2]
local rid = ARGV[3]

local r = rcall('HMGET', resKey, 'user', 'status', 'expires_at', 'order_id')
if not r[1] then return refuse('NOT_FOUND', 'no reservation ' .. rid) end
if r[1] ~= user then return refuse('FORBIDDEN', 'reservation ' .. rid .. ' belongs to another user') end
if r[2] == 'EXPIRED' then return refuse('RESERVATION_EXPIRED', 'reservation ' .. rid .. ' has expired') end
if r[2] ~= 'RESERVED' then return refuse('INVALID_STATE', 'reservation ' .. rid .. ' is ' .. r[2]) end
if r[4] then return refuse('CHECKOUT_IN_PROGRESS', 'order ' .. r[4] .. ' is paying for ' .. rid) end
local now = nowMs()
if now >= tonumber(r[3]) then
  endHold(prefix, stream, rid, 'EXPIRED', 'expired', now)
  return refuse('RESERVATION_EXPIRED', 'reservation ' .. rid .. ' has expired')
end

endHold(prefix, stream, rid, 'CANCELLED', 'released', now)
return entity(resKey)
