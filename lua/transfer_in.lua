--[[
  Deposits the units a transfer withdrew from another bucket of the SKU (lua/transfer_out.lua) into this
  one, once: the receipt (a field of the partition's receipts hash) makes a repeat change nothing. A
  caller that is not the sweeper may deposit only while the transfer is young (ARGV[5]): past that, a
  transfer is the sweeper's to finish, so that a late duplicate cannot arrive after the sweeper finished
  it and its receipt was pruned (engine/buckets.py says when receipts are pruned).

  Input:
    KEYS[1] bucket's sku hash   fs:{pN}:sku:<sku>
    KEYS[2] partition stream    fs:{pN}:events
    KEYS[3] receipts            fs:{pN}:moves:in   transfer id -> "<sku> <from bucket> <units> <at ms>"
    ARGV[1] transfer id
    ARGV[2] giving bucket       integer 0..MAX_BUCKETS-1
    ARGV[3] units               integer 1..MAX_UNITS, as transfer_out answered
    ARGV[4] withdrawn at        ms, transfer_out's clock
    ARGV[5] deadline            ms after ARGV[4] past which this call refuses; 0: no deadline (the sweeper)
  Output:
    units deposited now; 0 when the receipt says it was deposited before
  Errors:
    INVALID_ARGUMENT   malformed arguments (nothing written)
    NOT_FOUND          no sale for this SKU in this bucket (nothing written)
    TRANSFER_LATE      past the deadline: left to the sweeper (nothing written)
  Event: ["transferred_in", sku, at, transfer id, from bucket, to bucket, units]
  Publishes: the SKU id on fs:{pN}:stock (units came: a sold-out flag must drop) (includes/transfers.lua)
]]
--@include common
--@include transfers

local skuKey, stream, receipts = KEYS[1], KEYS[2], KEYS[3]
return depositTransfer(skuKey, stream, receipts, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
