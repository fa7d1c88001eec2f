-- The start of every script that decides: the limiter's constants, the server's time, the epoch
-- check on KEYS[1] (the limiter's meta hash) and the reply format. Times are server seconds.
--
-- ARGV, the same layout for every such script:
--   [1]  a fixed "now" for tests ('' = the server's TIME)
--   [2]  the epoch token this client knows ('' = none)
--   [3]  a fresh token to use if there is none
--   [4]  grace: seconds a grant may still be used after the last contact with the server
--   [5]  p1: sliding window: rate (units); gcra: interval (s per unit); token bucket: refill
--        (units per s)
--   [6]  p2: sliding window: period (s); buckets: capacity (units)
--   [7]  the other processes' local fallback shares (units; 0 = none)
--   [8]  lease duration (s)
--   [9]  tolerance (s): how late a waiter may wake and still go without asking again
--   [10] margin (s): a reservation relying on room due within this before now is provisional
--   [11] how far ahead (s) a reservation must be made to be provisional (period - margin)
--   [12] scan: how many entries (and candidate times) a search reads at most
--   [A + 1 ...] the script's own arguments
local A = 12
local grace = tonumber(ARGV[4])
local P1 = tonumber(ARGV[5])
local P2 = tonumber(ARGV[6])
local FBU = tonumber(ARGV[7])
local LEASE_DURATION = tonumber(ARGV[8])
local TOLERANCE = tonumber(ARGV[9])
local MARGIN = tonumber(ARGV[10])
local PROVISIONAL = tonumber(ARGV[11])
local SCAN = tonumber(ARGV[12])

local function fmt(x) return string.format('%.17g', x) end
local function units(m) return tonumber(string.match(m, ':([^:]*)$')) or 0 end

-- (the client computes now from the same two parts, with the same double arithmetic)
local now, now_s, now_us
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
  now_s, now_us = ARGV[1], '0'
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  now_s, now_us = t[1], t[2]
end

-- The epoch: a token the first caller writes. Gone (a restart, a flush) or replaced while this
-- client knew one: record restart_at, from which every key warms up (see the load functions).
local meta = KEYS[1]
local known = ARGV[2]
local mh = redis.call('HMGET', meta, 'epoch', 'restart_at', 'fb_until', 'created')
local epoch = mh[1]
local restart_at = tonumber(mh[2])
local fb_until = tonumber(mh[3])
if not epoch then
  epoch = ARGV[3]
  if known ~= '' then
    restart_at = now
    redis.call('HSET', meta, 'epoch', epoch, 'created', now, 'restart_at', now)
  else
    redis.call('HSET', meta, 'epoch', epoch, 'created', now)
  end
elseif known ~= '' and epoch ~= known and not restart_at then
  restart_at = tonumber(mh[4]) or now
  redis.call('HSET', meta, 'restart_at', restart_at)
end

-- A decision's reply, one string: "allowed remaining retry_after reset_in now_s now_us at epoch
-- member units_leased" (reset_in: seconds from now; at: '=' when now). One bulk reply is cheaper
-- to send and parse than an array; whole numbers (exact in Lua's %.14g below 1e14), zeros and
-- `at == now` skip string.format, which costs more than the rest of a hot decision's logic.
local function num(x)
  if x == math.floor(x) and x > -1e14 and x < 1e14 then return x .. '' end
  return fmt(x)
end
local function reply(allowed, remaining, retry_after, reset_in, at, member, granted)
  local a = '='
  if at ~= now then a = fmt(at) end
  local r = '0'
  if retry_after ~= 0 then r = fmt(retry_after) end
  return table.concat({allowed, num(remaining), r, num(reset_in), now_s, now_us, a, epoch, member,
                       num(granted)}, ' ')
end
