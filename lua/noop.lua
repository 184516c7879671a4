--[[
  Does nothing and returns 1: the benchmark's measure of what one EVALSHA round trip costs through a
  client, so the reserve script's rate can be read as a ratio to it.

  Input:
    KEYS[1] any key of the partition (not read; keeps the call routed like the real scripts)
  Output:
    1
  Errors: none.
]]
return 1
