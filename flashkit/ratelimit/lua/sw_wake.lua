-- A sliding-window waiter woke (after the prelude and sliding_window.lua). ARGV[A + 1] n,
-- [A + 2] max_wait (s), [A + 3] its member, [A + 4] its due time, [A + 5] the epoch it was
-- reserved in. A firm reservation, still there, woken within TOLERANCE s of its due time
-- stands. Otherwise its units count from now: the member leaves its slot and takes the earliest
-- time x >= now at which every window holding x has room, counting what is used up to now (due
-- grants too) and the firm grants after it; provisional ones ('&') check again when they wake,
-- so this earlier waiter goes first. The search is bounded (SCAN entries read, as many
-- candidate times): past that, or when nothing fits sooner, it queues behind the FIFO tail,
-- which counts every entry. Refused when x is more than max_wait away. Replies as decide.
load()
prune()
local n = tonumber(ARGV[A + 1])
local max_wait = tonumber(ARGV[A + 2])
local member = ARGV[A + 3]
local id = string.match(member, '^[+&]?(.*):[^:]*$')
local sc = redis.call('ZSCORE', log, member)
local at = now
local allowed = 0
local retry_after = 0
if sc and string.sub(member, 1, 1) ~= '&' and epoch == ARGV[A + 5]
    and now - tonumber(ARGV[A + 4]) <= TOLERANCE then
  at = tonumber(sc)  -- it stands, now known to be used: settled (no mark)
  redis.call('ZREM', log, member)
  member = id .. ':' .. ARGV[A + 1]
  redis.call('ZADD', log, at, member)
  allowed = 1
else
  if sc then
    redis.call('ZREM', log, member)
    total = total - n
    if total < 0 then total = 0 end
    dirty = true
  end
  at = earliest(n)
  if at > now then
    -- counted: every entry up to now (cumulative units by score), and the firm ones after now
    local later = redis.call('ZRANGEBYSCORE', log, '(' .. fmt(now), '+inf', 'WITHSCORES')
    local used = total
    local fs, fc = {}, {}
    for i = 1, #later, 2 do
      local u = units(later[i])
      used = used - u
      if string.sub(later[i], 1, 1) ~= '&' then
        fs[#fs + 1] = tonumber(later[i + 1])
        fc[#fc + 1] = (fc[#fc] or 0) + u
      end
    end
    local old = redis.call('ZRANGEBYSCORE', log, '-inf', fmt(now), 'WITHSCORES', 'LIMIT', 0,
                           SCAN)
    local ps, pc = {}, {}
    for i = 1, #old, 2 do
      ps[#ps + 1] = tonumber(old[i + 1])
      pc[#pc + 1] = (pc[#pc] or 0) + units(old[i])
    end
    local function count(s, y)  -- how many of the sorted scores s are <= y
      local lo, up = 0, #s
      while lo < up do
        local mid = math.floor((lo + up + 1) / 2)
        if s[mid] <= y then lo = mid else up = mid - 1 end
      end
      return lo
    end
    local function upto(s, c, y)  -- units of the entries scored <= y (of those read)
      return c[count(s, y)] or 0
    end
    local function held(w)  -- counted units in (w - period, w], for w >= now
      return used - upto(ps, pc, w - period) + upto(fs, fc, w) - upto(fs, fc, w - period)
    end
    local budget = SCAN
    local function fits(x)  -- every window [t, t + period) holding x ends at x or at a firm f
      if held(x) + n > rate + 1e-9 then return false end
      for k = count(fs, x) + 1, #fs do
        if fs[k] >= x + period then break end
        budget = budget - 1
        if budget < 0 or held(fs[k]) + n > rate + 1e-9 then return false end
      end
      return true
    end
    -- candidates: now, then each time a counted entry leaves the window (x = score + period)
    local i, k = 1, 1
    local x = now
    while x < at and budget > 0 do
      budget = budget - 1
      if fits(x) then
        at = x
        break
      end
      local a, b = ps[i], fs[k]
      if a and (not b or a <= b) then
        x = a + period
        i = i + 1
      elseif b then
        x = b + period
        k = k + 1
      else
        break
      end
    end
  end
  if at - now <= max_wait + 1e-9 then
    member = id .. ':' .. ARGV[A + 1]
    if at > now then member = reservation(at, id, ARGV[A + 1]) end
    redis.call('ZADD', log, at, member)
    total = total + n
    if at > tail then
      tail = at
      moved = true
    end
    if at > hi then hi = at end
    allowed = 1
    dirty = true
  else
    member = ''
    retry_after = at - now
  end
end
save()
return answer(allowed, retry_after, at, member, 0)
