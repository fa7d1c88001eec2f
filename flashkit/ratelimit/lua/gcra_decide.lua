-- Decide (after the prelude, bucket.lua and gcra.lua): ARGV[A + 1] n, [A + 2] max_wait (s),
-- [A + 3] the grant's id. Replies as reply() in the prelude.
load()
local n = tonumber(ARGV[A + 1])
local max_wait = tonumber(ARGV[A + 2])
local at = tat - (cap - n) * interval
if at < now then at = now end
local allowed = 0
local retry_after = 0
if at - now <= max_wait + 1e-9 then
  local base = tat
  if at > base then base = at end
  tat = base + n * interval
  redis.call('HSET', st, 'tat', tat, 'last', ARGV[A + 3], 'before', s[1] or '')
  keep_until(tat)
  allowed = 1
else
  retry_after = at - now
end
local fill = tat - now
if fill < 0 then fill = 0 end
local remaining = cap - fill / interval
if remaining < 0 then remaining = 0 end
local reset_in = tat - now
if reset_in < 0 then reset_in = 0 end
return reply(allowed, remaining, retry_after, reset_in, at, ARGV[A + 3], 0)
