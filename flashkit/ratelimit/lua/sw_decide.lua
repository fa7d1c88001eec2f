-- Decide (after the prelude and sliding_window.lua): admit n units now, reserve the earliest
-- time they fit within max_wait, or refuse. ARGV[A + 1] n, [A + 2] max_wait (s), [A + 3] the
-- entry id, [A + 4] lease units (0: no lease), [A + 5] the number of lease returns, then
-- (member, units kept) pairs: expired leases' unused units given back. Replies as reply() in
-- the prelude (member empty when refused).
load()
if now - pruned_at >= period / 16 then prune() end
local j = A + 6
for i = 1, tonumber(ARGV[A + 5]) do
  local mem = ARGV[j]
  local sc = redis.call('ZSCORE', log, mem)
  if sc then
    redis.call('ZREM', log, mem)
    total = total - units(mem)
    local keep = tonumber(ARGV[j + 1])
    if keep > 0 then
      redis.call('ZADD', log, sc, string.match(mem, '^(.*):[^:]*$') .. ':' .. ARGV[j + 1])
      total = total + keep
    end
    dirty = true
  end
  j = j + 2
end
local n = tonumber(ARGV[A + 1])
local max_wait = tonumber(ARGV[A + 2])
local lease = tonumber(ARGV[A + 4])
local at = now
local queued = nil
if tail > now or total + n - rate > 1e-9 then
  at = earliest(n)
  if at > now and at - now <= max_wait + 1e-9 then
    queued = reservation(at, ARGV[A + 3], ARGV[A + 1])
  end
end
local allowed = 0
local retry_after = 0
local member = ''
local granted = 0
if at <= now and lease > 0 then
  -- a lease: charged as one entry scored when it ends ('^': used before its score)
  granted = math.min(lease, rate - total)
  if granted < n then granted = n end
  member = '^' .. ARGV[A + 3] .. ':' .. fmt(granted)
  local lease_ends = now + LEASE_DURATION
  redis.call('ZADD', log, lease_ends, member)
  total = total + granted
  if lease_ends > hi then hi = lease_ends end
  allowed = 1
  dirty = true
elseif at - now <= max_wait + 1e-9 then
  member = queued or (ARGV[A + 3] .. ':' .. ARGV[A + 1])
  redis.call('ZADD', log, at, member)
  total = total + n
  if at > now then
    tail = at
    moved = true
  end
  if at > hi then hi = at end
  allowed = 1
  dirty = true
else
  retry_after = at - now
end
save()
return answer(allowed, retry_after, at, member, granted)
