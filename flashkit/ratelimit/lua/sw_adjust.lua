-- Reconcile an estimate (after the prelude and sliding_window.lua): ARGV[A + 1] delta = actual
-- - estimate (units), [A + 2] the latest server time a refund may come from ('' = the key's
-- oldest units first), [A + 3] an entry id. A charge (delta > 0) is a new entry at max(now,
-- FIFO tail). A refund (delta < 0) comes from settled entries in the window scored no later
-- than ARGV[A + 2] (newest first; oldest first without it): not from reservations ('+', '&':
-- their waiters still need them), leases ('^': used before their score) or phantoms ('~'). Why
-- no later than the caller's grant is safe: the log then drops units at te <= tc; every window
-- that can still admit (ends after now >= tc) and holds te also holds tc, where the caller's
-- real use is the estimate minus the refund. Reads at most SCAN entries. Returns the units
-- charged or refunded.
load()
prune()
local delta = tonumber(ARGV[A + 1])
local done = 0
if delta > 0 then
  local at = now
  if tail > now then at = tail end
  redis.call('ZADD', log, at, ARGV[A + 3] .. ':' .. ARGV[A + 1])
  total = total + delta
  if at > hi then hi = at end
  done = delta
  dirty = true
elseif delta < 0 then
  local left = -delta
  local upto = now
  local newest = ARGV[A + 2] ~= ''
  if newest and tonumber(ARGV[A + 2]) < now then upto = tonumber(ARGV[A + 2]) end
  local low = '(' .. fmt(now - period)
  local skipped = 0
  local size = 8
  while left > 1e-9 and skipped < SCAN do
    local chunk
    if newest then
      chunk = redis.call('ZREVRANGEBYSCORE', log, fmt(upto), low, 'WITHSCORES', 'LIMIT', skipped,
                         size)
    else
      chunk = redis.call('ZRANGEBYSCORE', log, low, fmt(upto), 'WITHSCORES', 'LIMIT', skipped,
                         size)
    end
    if #chunk == 0 then break end
    for i = 1, #chunk, 2 do
      local m = chunk[i]
      local c = string.sub(m, 1, 1)
      local u = units(m)
      if c == '+' or c == '&' or c == '^' or c == '~' or u <= 0 or left <= 1e-9 then
        skipped = skipped + 1  -- (entries taken whole leave the set: the offset skips the rest)
      else
        local take = math.min(left, u)
        redis.call('ZREM', log, m)
        if u - take > 1e-9 then
          redis.call('ZADD', log, chunk[i + 1], string.match(m, '^(.*):[^:]*$') .. ':' ..
                     fmt(u - take))
        end
        total = total - take
        left = left - take
        done = done + take
        dirty = true
      end
    end
    size = size * 4
  end
  if total < 0 then total = 0 end
end
save()
return fmt(done)
