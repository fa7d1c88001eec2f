-- The sliding window's state and its operations (after the prelude; a script calls load()).
-- KEYS[2] log: a sorted set of entries "<id>:<units>" scored by server time (a reservation's id
-- marked '+' firm or '&' provisional, a lease's '^', a phantom's '~'). KEYS[3] st: a hash of
-- the log's total, the FIFO tail, the latest score (hi), when it was last pruned (pr) and when
-- the keys expire (exp).
local rate = P1
local period = P2
local log = KEYS[2]
local st = KEYS[3]
local total, tail, hi, pruned_at, expires = 0, 0, 0, 0, 0
local dirty = false
local moved = false  -- tail or pruned_at changed (else only total and hi need writing)
local pruned = false

-- Entries that left the window are dropped lazily: when room is short (see earliest), by the
-- scripts that scan the log, and at least every period / 16 (so `remaining` stays close); a
-- hot decision with room to spare costs no extra command.
local function prune()
  pruned = true
  pruned_at = now
  dirty = true
  moved = true
  local cutoff = now - period
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff)
  if #old > 0 then
    for i = 1, #old do total = total - units(old[i]) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', cutoff)
    if redis.call('ZCARD', log) == 0 then total = 0 end
  end
end

-- Read the key's state, with the phantoms that hold room nobody can account for: `rate` units
-- at restart_at + grace after a restart, the others' fallback shares until fb_until.
local function load()
  local s = redis.call('HMGET', st, 'total', 'tail', 'hi', 'pr', 'exp')
  total = tonumber(s[1]) or 0
  tail = tonumber(s[2]) or 0
  hi = tonumber(s[3]) or 0
  pruned_at = tonumber(s[4]) or 0
  expires = tonumber(s[5]) or 0
  if restart_at and now < restart_at + grace + period then
    local at = restart_at + grace
    if redis.call('ZADD', log, 'GT', at, '~rs:' .. ARGV[5]) == 1 then total = total + rate end
    if at > hi then hi = at end
    dirty = true
  end
  if fb_until and FBU > 0 and now < fb_until + period then
    if redis.call('ZADD', log, 'GT', fb_until, '~fb:' .. ARGV[7]) == 1 then
      total = total + FBU
    end
    if fb_until > hi then hi = fb_until end
    dirty = true
  end
end

-- The earliest time ``n`` more units fit, behind the FIFO tail (for a grant or a reservation).
local function earliest(n)
  local at = now
  if tail > now then at = tail end
  local excess = total + n - rate
  if excess > 1e-9 and not pruned then
    prune()
    excess = total + n - rate
  end
  if excess > 1e-9 then
    -- the earliest time the oldest entries have left enough room (entries in score order)
    -- (read in growing chunks: usually the oldest entry alone frees enough)
    local freed = 0
    local idx = 0
    local size = 2
    local found = nil
    while not found do
      local chunk = redis.call('ZRANGE', log, idx, idx + size - 1, 'WITHSCORES')
      if #chunk == 0 then break end
      for i = 1, #chunk, 2 do
        freed = freed + units(chunk[i])
        if freed >= excess - 1e-9 then
          found = tonumber(chunk[i + 1]) + period
          break
        end
      end
      idx = idx + size
      size = size * 4
    end
    found = found or (at + period)
    if found > at then at = found end
  end
  return at
end

-- The member of a reservation at `at`: '+' (firm) or '&' (provisional: it re-checks when it
-- wakes, and waiters ahead of it that wake late may take its room meanwhile). Provisional when
-- it relies on the room of a reservation due within MARGIN s before now (entries scored up to
-- at - period leave its window; that one may still be used late and move into it).
local function reservation(at, id, units_text)
  if at - now > PROVISIONAL then
    local near = redis.call('ZRANGEBYSCORE', log, '(' .. fmt(now - MARGIN), fmt(at - period),
                            'LIMIT', 0, SCAN)
    if #near >= SCAN then return '&' .. id .. ':' .. units_text end
    for i = 1, #near do
      local c = string.sub(near[i], 1, 1)
      if c == '+' or c == '&' then return '&' .. id .. ':' .. units_text end
    end
  end
  return '+' .. id .. ':' .. units_text
end

-- Write the state back. The keys live until every entry has left the window, plus slack: their
-- expiry is pushed out (by a period more than needed) only when it falls short, not on every
-- decision.
local function save()
  if not dirty then return end
  if hi + period + 1 > expires then
    expires = math.max(hi, now) + 2 * period + 1
    local ttl = math.ceil((expires - now) * 1000)
    redis.call('PEXPIRE', log, ttl)
    redis.call('HSET', st, 'total', total, 'tail', tail, 'hi', hi, 'pr', pruned_at,
               'exp', expires)
    redis.call('PEXPIRE', st, ttl)
  elseif moved then
    redis.call('HSET', st, 'total', total, 'tail', tail, 'hi', hi, 'pr', pruned_at)
  else
    redis.call('HSET', st, 'total', total, 'hi', hi)
  end
end

-- A decision's reply (see reply() in the prelude), with what is left and when all is free.
local function answer(allowed, retry_after, at, member, granted)
  local remaining = rate - total
  if tail > now or remaining < 0 then remaining = 0 end
  local reset_in = (hi - now) + period
  if reset_in < 0 then reset_in = 0 end
  return reply(allowed, remaining, retry_after, reset_in, at, member, granted)
end
