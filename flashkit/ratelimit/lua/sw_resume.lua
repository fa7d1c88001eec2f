-- Resume after an outage (after the prelude and sliding_window.lua): replay this process's
-- local admissions into the log and mark the others' local shares. ARGV[A + 1] seconds the
-- mark lasts ('' = do not mark), [A + 2] an id prefix, then (seconds ago, units) pairs.
-- Returns {now, epoch}.
if ARGV[A + 1] ~= '' and FBU > 0 then
  local mark_until = now + tonumber(ARGV[A + 1])
  if not fb_until or mark_until > fb_until then
    redis.call('HSET', meta, 'fb_until', mark_until)
    fb_until = mark_until
  end
end
load()
prune()
local k = 0
for j = A + 3, #ARGV, 2 do
  local at = now - tonumber(ARGV[j])
  if at > now - period then
    k = k + 1
    redis.call('ZADD', log, at, ARGV[A + 2] .. '-' .. k .. ':' .. ARGV[j + 1])
    total = total + tonumber(ARGV[j + 1])
    if at > hi then hi = at end
    dirty = true
  end
end
save()
return {fmt(now), epoch}
