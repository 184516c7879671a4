--[[
  Renews a write-behind worker's lease on a partition, but only while that worker still holds it: a
  worker never extends a lease it has lost to another.

  Input:
    KEYS[1] the partition's lease   fs:{pN}:writeback:lease   string: the holder's worker id
    ARGV[1] worker id               the caller
    ARGV[2] lease length ms         integer > 0
  Output:
    1 when renewed, 0 when the lease is not (or no longer) the caller's
  Errors: none.
]]
local rcall = redis.call
local leaseKey = KEYS[1]
local worker = ARGV[1]
local leaseMs = ARGV[2]

if rcall('GET', leaseKey) == worker then
  return rcall('PEXPIRE', leaseKey, leaseMs)
end
return 0
