-- GCRA state (after bucket.lua; a script calls load()): st holds tat (the theoretical arrival
-- time), the last grant's id and the tat before it (for a refund of the latest grant).
local interval = P1
local cap = P2
local tat = now
local function load()
  s = redis.call('HMGET', st, 'tat', 'exp')
  tat = tonumber(s[1]) or now
  expires = tonumber(s[2]) or 0
  if restart_at then  -- after a restart: an empty bucket at restart_at + grace
    local floor = restart_at + grace + cap * interval
    if floor > now and floor > tat then tat = floor end
  end
end
