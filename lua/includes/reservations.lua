--[[
  The reservation record: one string of fields separated by single spaces (ids and SKUs never contain
  spaces; '-' and 0 stand for "none"). An ended reservation's record has nine:

    sku user quantity status created_at expires_at order_id pay_until ended_at

  an open hold's record (status RESERVED, not ended) leaves those two out, 11 characters fewer per hold:

    sku user quantity created_at expires_at order_id pay_until

  An open hold's record is a field of its partition's hash fs:{pN}:open (field: the reservation id); when
  the hold ends, its record moves to a key of its own, fs:{pN}:r:<reservation id>, kept for RETENTION_MS.
  A field of a shared hash, not a key or a hash per hold: far less memory per hold, and cheaper to create
  (README, Performance). engine/models.py reads the same layouts (and a nine-field open record, as written
  before open records were shortened).
]]
--@include common

local OPEN_PATTERN = '^(%S+) (%S+) (%d+) (%d+) (%d+) (%S+) (%d+)$'
local RESERVATION_PATTERN = '^(%S+) (%S+) (%d+) (%u+) (%d+) (%d+) (%S+) (%d+) (%d+)$'

local function openKey(prefix)
  return prefix .. 'open'
end

local function endedKey(prefix, rid)
  return prefix .. 'r:' .. rid
end

local function packReservation(r)
  local head = r.sku .. ' ' .. r.user .. ' ' .. r.quantity .. ' '
  local tail = ' ' .. (r.order_id or '-') .. ' ' .. (r.pay_until or 0)
  if r.status == 'RESERVED' then return head .. r.created_at .. ' ' .. r.expires_at .. tail end
  return head .. r.status .. ' ' .. r.created_at .. ' ' .. r.expires_at .. tail .. ' ' .. (r.ended_at or 0)
end

-- The keys a reservation's record may be in (readReservation reads both, writeReservation writes both).
local function reservationKeys(prefix, rid)
  return {openKey(prefix), endedKey(prefix, rid)}
end

-- A record as a table, or nil when it is not a reservation record.
local function parseReservation(value)
  local status, ended = 'RESERVED', '0'
  local sku, user, qty, created, expires, order, payUntil = string.match(value, OPEN_PATTERN)
  if not sku then
    sku, user, qty, status, created, expires, order, payUntil, ended = string.match(value, RESERVATION_PATTERN)
    if not sku then return nil end
  end
  return {
    sku = sku, user = user, quantity = tonumber(qty), status = status, created_at = tonumber(created),
    expires_at = tonumber(expires), order_id = order ~= '-' and order or nil, pay_until = tonumber(payUntil),
    ended_at = tonumber(ended),
  }
end

-- The record as a table, or nil when there is none (or it is not a reservation record).
local function readReservation(prefix, rid)
  local value = rcall('HGET', openKey(prefix), rid) or rcall('GET', endedKey(prefix, rid))
  if not value then return nil end
  return parseReservation(value)
end

-- An open hold's record, or nil when the reservation is not open.
local function readOpenReservation(prefix, rid)
  local value = rcall('HGET', openKey(prefix), rid)
  if not value then return nil end
  return parseReservation(value)
end

-- An open hold's record in the open hash; an ended one in a key of its own, kept for RETENTION_MS.
local function writeReservation(prefix, rid, r)
  if r.status == 'RESERVED' then
    rcall('HSET', openKey(prefix), rid, packReservation(r))
  else
    rcall('HDEL', openKey(prefix), rid)
    rcall('SET', endedKey(prefix, rid), packReservation(r), 'PX', RETENTION_MS)
  end
end

-- When an open hold ends unless paid for: its payment grace while a checkout is paying, else its expiry.
local function deadline(r)
  if r.order_id and r.pay_until > 0 then return r.pay_until end
  return r.expires_at
end
