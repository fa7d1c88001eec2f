-- Charge units above an estimate (after the prelude, bucket.lua and token_bucket.lua):
-- ARGV[A + 1] units, at now. Returns them.
load()
local l, w = level_at(now)
level = l - tonumber(ARGV[A + 1])
stamp = w
redis.call('HSET', st, 'level', level, 'stamp', stamp, 'last', '', 'before', '')
keep_until(stamp + (cap - level) / refill)
return ARGV[A + 1]
