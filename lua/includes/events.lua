-- Needs: rcall (common).
--@include common
-- Appends one event to the partition's stream. Every state change calls this exactly once, in the same
-- script as the change, so the stream is a complete log. Deltas are the change to the SKU's counters
-- (available, reserved, sold, total); extra holds the event's own field/value pairs.
local function emit(stream, kind, sku, now, da, dr, ds, dt, extra)
  local fields = {'type', kind, 'sku', sku, 'at', now, 'da', da, 'dr', dr, 'ds', ds, 'dt', dt}
  for i = 1, #extra do
    fields[#fields + 1] = extra[i]
  end
  return rcall('XADD', stream, '*', unpack(fields))
end
