--[[
  The stock-bucket transfers of a ledger (fs:{pN}:moves:out) or of a receipts hash (fs:{pN}:moves:in)
  recorded more than ARGV[1] ms ago: what the sweeper finishes, or may forget (engine/buckets.py).

  Input:
    KEYS[1] ledger or receipts  values "<sku> <bucket> <units> <at ms>"
    ARGV[1] age                 ms
  Output:
    {transfer id, record, ...} for the entries at least that old (at most 1,000)
  Errors: none.
]]
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local due = {}
for i = 1, #all, 2 do
  local at = tonumber(string.match(all[i + 1], '(%d+)$'))
  if at <= cutoff and #due < 2000 then
    due[#due + 1] = all[i]
    due[#due + 1] = all[i + 1]
  end
end
return due
