-- Token bucket state (after bucket.lua; a script calls load()): st holds the level at stamp
-- (absent: full), the last grant's id and the state before it (for a refund of the latest
-- grant).
local refill = P1
local cap = P2
local level, stamp
local function load()
  s = redis.call('HMGET', st, 'level', 'stamp', 'exp')
  level = tonumber(s[1])
  stamp = tonumber(s[2])
  expires = tonumber(s[3]) or 0
  if restart_at then  -- after a restart: an empty bucket at restart_at + grace
    local empty_at = restart_at + grace
    local floor = empty_at + cap / refill
    if floor > now then
      local full_at = now
      if level then full_at = stamp + (cap - level) / refill end
      if floor > full_at then
        level = 0
        stamp = empty_at
      end
    end
  end
end
-- The level at time t (not before the stamp), and the time it is for.
local function level_at(t)
  if not level then return cap, t end
  local when = t
  if stamp > t then when = stamp end
  local l = level + (when - stamp) * refill
  if l > cap then l = cap end
  return l, when
end
