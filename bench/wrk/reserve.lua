-- wrk script: POST /api/v1/reservations, each request with its own user's bearer token.
--   wrk -t THREADS -s bench/wrk/reserve.lua URL -- TOKENS_FILE SKU PACE_MS THREADS
-- TOKENS_FILE holds one token per line (one user each); thread k of n sends tokens k, k+n, k+2n, ...
-- PACE_MS > 0 makes each connection wait that long between requests (a paced, lighter load).
-- At the end it prints one JSON line: requests, duration, errors, latency percentiles, status counts.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  tokens = {}
  local stride = tonumber(args[4])
  local n = 0
  for line in io.lines(args[1]) do
    if n % stride == index then
      tokens[#tokens + 1] = line
    end
    n = n + 1
  end
  body = '{"skuId":"' .. args[2] .. '","quantity":1}'
  pace = tonumber(args[3] or "0")
  next_token = 0
end

function request()
  next_token = next_token + 1
  local token = tokens[(next_token - 1) % #tokens + 1]
  return wrk.format("POST", "/api/v1/reservations",
    {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body)
end

function delay()
  return pace
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  wrapped = next_token > #tokens
end

function done(summary, latency, requests)
  local counts = {}
  local wrapped_any = false
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[tostring(status)] = (counts[tostring(status)] or 0) + n
    end
    wrapped_any = wrapped_any or thread:get("wrapped") == true
  end
  local parts = {}
  for status, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%s":%d', status, n)
  end
  local e = summary.errors
  io.write(string.format(
    '\nRESULT {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p99_9":%d,"max":%d,"mean":%.1f},' ..
    '"statuses":{%s},"tokens_reused":%s}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean, table.concat(parts, ","), tostring(wrapped_any)))
end
