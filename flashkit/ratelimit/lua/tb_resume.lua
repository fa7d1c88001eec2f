-- Resume after an outage (after the prelude, bucket.lua and token_bucket.lua): replay this
-- process's local admissions. ARGV[A + 1], [A + 2]: unused here (see sw_resume.lua), then
-- (seconds ago, units) pairs. Returns {now, epoch}.
load()
local changed = false
for j = A + 3, #ARGV, 2 do
  local l2, w2 = level_at(now - tonumber(ARGV[j]))
  level = l2 - tonumber(ARGV[j + 1])
  stamp = w2
  changed = true
end
if changed then
  redis.call('HSET', st, 'level', level, 'stamp', stamp, 'last', '', 'before', '')
  keep_until(stamp + (cap - level) / refill)
end
return {fmt(now), epoch}
