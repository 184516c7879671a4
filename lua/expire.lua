--[[
  The sweeper's step for one partition: ends up to ARGV[2] holds whose deadline has passed, oldest
  first. A hold whose payment grace ran out (checkout abandoned) ends too, and its order becomes FAILED.
  Bounded work per call, so the sweeper can run it often without stalling Redis.

  Input:
    KEYS[1] partition deadlines  fs:{pN}:deadlines   zset reservation id -> deadline ms
    KEYS[2] partition stream     fs:{pN}:events
    ARGV[1] key prefix of the partition  fs:{pN}:
    ARGV[2] limit                integer 1..10,000
  Output:
    the number of reservations ended (integer)
    error INVALID_ARGUMENT  malformed limit (nothing written)
  Event: expired per reservation ended (available +q, reserved -q)
]]
--@include common
--@include events
--@include holds

local deadlinesKey = KEYS[1]
local stream = KEYS[2]
local prefix = ARGV[1]
local limit = parseCount(ARGV[2], 10000)
if limit == nil or limit < 1 then return refuse('INVALID_ARGUMENT', 'limit must be an integer from 1 to 10000') end

return expireDue(prefix, stream, deadlinesKey, nowMs(), limit)
