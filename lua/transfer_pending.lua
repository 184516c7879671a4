--[[
  Whether a stock-bucket transfer is still in its giver's ledger (not yet known deposited): the sweeper
  forgets a receiver's old receipt only once this says 0 (engine/buckets.py).

  Input:
    KEYS[1] transfer ledger     fs:{pN}:moves:out
    ARGV[1] transfer id
  Output:
    1 when the ledger holds it, 0 when not
  Errors: none.
]]
return redis.call('HEXISTS', KEYS[1], ARGV[1])
