--[[
  Appends one event to the partition's stream. Every state change calls this exactly once, in the same
  script as the change, so the stream is a complete log. An entry has one field, `e`: a JSON array
  [type, sku, at, ...] whose positions after `at` (the script's clock, ms) are engine/events.py's LAYOUT
  per type (the one place that says what an event means). `fields` is the JSON of those positions,
  each with its leading comma. The entry's id gives the event's order in the partition.
]]
--@include common

local function emit(stream, kind, sku, at, fields)
  return rcall('XADD', stream, '*', 'e', '["' .. kind .. '","' .. sku .. '",' .. at .. fields .. ']')
end
