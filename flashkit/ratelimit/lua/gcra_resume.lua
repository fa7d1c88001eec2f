-- Resume after an outage (after the prelude, bucket.lua and gcra.lua): replay this process's
-- local admissions. ARGV[A + 1], [A + 2]: unused here (see sw_resume.lua), then (seconds ago,
-- units) pairs. Returns {now, epoch}.
load()
for j = A + 3, #ARGV, 2 do
  local at = now - tonumber(ARGV[j])
  if at > tat then tat = at end
  tat = tat + tonumber(ARGV[j + 1]) * interval
end
if tat > now then
  redis.call('HSET', st, 'tat', tat, 'last', '', 'before', '')
  keep_until(tat)
end
return {fmt(now), epoch}
