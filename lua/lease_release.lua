--[[
  Gives a write-behind worker's lease on a partition up, but only while that worker still holds it, so a
  slow worker never frees the lease its successor already took.

  Input:
    KEYS[1] the partition's lease   fs:{pN}:writeback:lease   string: the holder's worker id
    ARGV[1] worker id               the caller
  Output:
    1 when released, 0 when the lease is not (or no longer) the caller's
  Errors: none.
]]
local rcall = redis.call
local leaseKey = KEYS[1]
local worker = ARGV[1]

if rcall('GET', leaseKey) == worker then
  return rcall('DEL', leaseKey)
end
return 0
