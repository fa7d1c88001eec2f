-- Charge units above an estimate (after the prelude, bucket.lua and gcra.lua): ARGV[A + 1]
-- units, at now. Returns them.
load()
if tat < now then tat = now end
tat = tat + tonumber(ARGV[A + 1]) * interval
redis.call('HSET', st, 'tat', tat, 'last', '', 'before', '')
keep_until(tat)
return ARGV[A + 1]
