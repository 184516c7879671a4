--[[
  The reservation record: one string per reservation at fs:{pN}:r:<reservation id>, nine fields in this
  order, separated by single spaces (ids and SKUs never contain spaces; '-' and 0 stand for "none"):

    sku user quantity status created_at expires_at order_id pay_until ended_at

  One string, not a hash: creating it costs a fraction of a 9-field hash, in CPU and memory (README,
  Performance). engine/models.py reads the same layout.
]]
--@include common

local RESERVATION_PATTERN = '^(%S+) (%S+) (%d+) (%u+) (%d+) (%d+) (%S+) (%d+) (%d+)$'

local function reservationKey(prefix, rid)
  return prefix .. 'r:' .. rid
end

local function packReservation(r)
  return r.sku .. ' ' .. r.user .. ' ' .. r.quantity .. ' ' .. r.status .. ' ' .. r.created_at .. ' '
    .. r.expires_at .. ' ' .. (r.order_id or '-') .. ' ' .. (r.pay_until or 0) .. ' ' .. (r.ended_at or 0)
end

-- The record as a table, or nil when there is none (or it is not a reservation record).
local function readReservation(key)
  local value = rcall('GET', key)
  if not value then return nil end
  local sku, user, qty, status, created, expires, order, payUntil, ended = string.match(value, RESERVATION_PATTERN)
  if not sku then return nil end
  return {
    sku = sku, user = user, quantity = tonumber(qty), status = status, created_at = tonumber(created),
    expires_at = tonumber(expires), order_id = order ~= '-' and order or nil, pay_until = tonumber(payUntil),
    ended_at = tonumber(ended),
  }
end

-- An open hold's record; an ended one is kept for RETENTION_MS.
local function writeReservation(key, r)
  if r.status == 'RESERVED' then
    rcall('SET', key, packReservation(r))
  else
    rcall('SET', key, packReservation(r), 'PX', RETENTION_MS)
  end
end

-- When an open hold ends unless paid for: its payment grace while a checkout is paying, else its expiry.
local function deadline(r)
  if r.order_id and r.pay_until > 0 then return r.pay_until end
  return r.expires_at
end
