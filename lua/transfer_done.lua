--[[
  Ends a transfer on the giving bucket once the receiving bucket has its units (lua/transfer_in.lua):
  the ledger entry goes. Nothing else changes: the units left this bucket's counters when withdrawn.
  Also forgets an old receipt (fs:{pN}:moves:in) once its ledger entry is gone (engine/buckets.py).

  Input:
    KEYS[1] transfer ledger     fs:{pN}:moves:out (or receipts fs:{pN}:moves:in)
    ARGV[1] transfer id
  Output:
    1 when the entry was there, 0 when it was already gone
  Errors: none.
]]
return redis.call('HDEL', KEYS[1], ARGV[1])
