-- Decide (after the prelude, bucket.lua and token_bucket.lua): ARGV[A + 1] n, [A + 2]
-- max_wait (s), [A + 3] the grant's id. Replies as reply() in the prelude.
load()
local n = tonumber(ARGV[A + 1])
local max_wait = tonumber(ARGV[A + 2])
local l, when = level_at(now)
local at = when
if l < n - 1e-9 then at = when + (n - l) / refill end
local allowed = 0
local retry_after = 0
if at - now <= max_wait + 1e-9 then
  local before = ''
  if s[1] then before = s[1] .. '|' .. s[2] end
  local l2, w2 = level_at(at)
  level = l2 - n
  stamp = w2
  redis.call('HSET', st, 'level', level, 'stamp', stamp, 'last', ARGV[A + 3],
             'before', before)
  keep_until(stamp + (cap - level) / refill)
  allowed = 1
else
  retry_after = at - now
end
l, when = level_at(now)
local remaining = l
if when > now or remaining < 0 then remaining = 0 end
return reply(allowed, remaining, retry_after, (when - now) + (cap - l) / refill, at, ARGV[A + 3],
             0)
