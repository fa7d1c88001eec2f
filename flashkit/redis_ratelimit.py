"""A rate limit shared by many processes: one atomic Lua script per decision on Redis.

>>> rpm = RedisRateLimiter("redis://redis:6379/0", 60, 60.0)   # 60 per minute, for all processes
>>> rpm.try_acquire()                                          # RateLimitResult, never waits
>>> await rpm.acquire(timeout=30.0)                            # waits its turn (FIFO), or raises
>>> decision = await rpm.acquire_detailed()                    # + the server time it counts at
>>> tpm = RedisRateLimiter("redis://redis:6379/0", 30_000, 60.0, name="tokens")
>>> grant = await tpm.acquire_detailed(count=2_000)            # a max_tokens estimate
>>> await tpm.adjust_async("default", 1_234, estimated_count=2_000, admitted_at=grant.server_time)

The interface and the semantics are those of :class:`flashkit.ratelimit.RateLimiter` (see its
module docstring): ``sliding_window`` (default, strict: no half-open window ``[t, t + period)``
ever holds more than ``rate`` units), ``token_bucket`` and ``gcra`` (same admissions, ``burst=None``
= a one-unit pacer); waiters are first come, first served (an ``acquire`` takes its capacity at
once, at the earliest time it fits, and sleeps until then; a ``timeout`` it cannot meet fails at
once with ``retry_after``; a later ``try_acquire`` never jumps the queue); a ``count`` the limit
can never grant raises a non-retryable :class:`~flashkit.errors.ValidationError`; cancelling a
waiting ``acquire`` gives its capacity back. ``stats`` is a
:class:`~flashkit.ratelimit.LimiterStats`.

What is different:

- **Time is the Redis server's** (``redis.call('TIME')`` inside every script), so the processes'
  clocks do not matter. Each decision is one ``EVALSHA`` round trip that reads and writes the key's
  state atomically (no read-modify-write race between processes). ``reset_at`` in results is
  translated to this process's ``clock``; :class:`RedisDecision` (from ``try_acquire_detailed`` /
  ``acquire_detailed``) also gives ``server_time``: the server time the admitted units count at.
- **Reconciling estimates** (``adjust`` / ``adjust_async``, the key form of
  :meth:`RateLimiter.adjust <flashkit.ratelimit.RateLimiter.adjust>`): one script charges usage
  above the estimate or refunds the rest — from the grant at ``admitted_at`` (its
  ``server_time``) back, never from a later grant, a reservation, a lease or a phantom. No
  ``reserve()``: a waiting ``acquire`` already holds its capacity in the shared log.
- **Storage.** All keys of one limiter share the hash tag ``{key_prefix:name}`` (one Redis Cluster
  slot). Per limit key: ``{…}:<key>:log`` (sliding window: a sorted set of entries
  ``"<id>:<units>"`` scored by server time, a reservation's id marked ``+`` (firm) or ``&``
  (provisional) until it is known to be used) or ``{…}:<key>:st`` (a hash: the log's total, the FIFO
  tail and the latest score; or the bucket level / the GCRA theoretical arrival time), expiring
  once they no longer matter (pushed out past twice what is needed, and only when short, so a
  hot decision writes no expiry). Per limiter: ``{…}:meta`` (a hash with no expiry: the epoch
  token).
- **Leases** (``lease=k``, sliding window only): one round trip takes up to ``k`` units; this
  process hands them out locally until ``lease_duration`` seconds after it *sent* the request.
  The lease is charged as one log entry scored at grant time + ``lease_duration``. Why that is
  strict: the units are used inside ``[grant, grant + lease_duration]`` of server time (used after
  the reply, and no later than send + duration <= grant + duration). The grant itself is checked
  like an admission at ``grant`` (every window containing a point of that interval only holds
  entries scored after ``grant - period``, all counted). Any later admission at ``x`` counts every
  entry scored after ``x - period``; a window holding both ``x`` and a use time ``u`` has
  ``x - period < u <= grant + lease_duration``, so the lease's entry is counted. Unused units of an
  expired lease are given back on the next round trip for that key (or at ``close()``). A lease
  never moves the FIFO tail, and is only granted when nobody is queued.
- **Confirm on wake** (sliding window, as :class:`~flashkit.ratelimit.RateLimiter` does): a
  waiter's units count from when they are really used, not from when they were due. An event
  loop can wake a waiter late (busy, or many waiters due together); counted at its due time
  while the next window's grants go out on time, the upstream would see more than ``rate`` in a
  window. So a waiter woken more than a tolerance after its due time (this process's best
  estimate of server time: the tightest round trip seen) makes one more round trip, which also
  does the restart check below: its entry leaves its slot and goes at the server's ``now`` if
  every window holding ``now`` has room, counting what is used up to now and the firm
  reservations after it; else at the earliest time that has room (it sleeps again), or, past
  ``timeout``, it fails with ``code="timeout"``. ``server_time`` is then that time. The
  tolerance is ``max(2 ms, period / 1024)``: an asyncio timer fires up to ~1 ms late and a
  sleep starts when the reply arrives, half a round trip after the decision; a use may lag its
  count by that much (plus, for a grant decided by a round trip, that reply's delivery, which
  no server-side limiter sees). A waiter woken on time pays no extra round trip, unless its
  reservation is *provisional*: made more than ``period - margin`` ahead (``margin =
  max(period / 8, 2 * tolerance)``) on room left by another reservation due within ``margin``
  before, which may still be used late and move into its window. Such a reservation yields to
  that earlier waiter and checks again when it wakes (so does any check: the room it relied on
  may be gone); a firm one is never moved over (a late waiter that would need its room waits
  for the next that fits). (A check of only what is used up to now would let a reservation
  made more than a period ahead go out on time in a window a late waiter ahead of it moved
  into.) ``token_bucket`` and ``gcra`` keep their schedule: lateness can compress the spacing
  of their uses by as much.

Outages (Redis down, restarted, flushed). The argument below assumes every process of a limiter is
built with the same settings, at most ``expected_processes`` of them, and round trips shorter than
``lease_duration`` (the *grace*: how long a process may still use a grant after its last contact
with the server):

- **Restart detection.** The first process that calls creates ``{…}:meta`` with a random epoch
  token; every call passes the token this process knows. If the token is gone (restart, flush) or
  replaced while this process knew one, the script records ``restart_at`` and from then on every
  key gets a phantom entry of ``rate`` units at ``restart_at + grace`` (token bucket / GCRA: an
  empty bucket then): the new server cannot know what was admitted in the last period, so nothing
  is admitted for ``period + grace`` (``acquire`` queues behind it; ``try_acquire`` gets
  ``retry_after``). A brand-new deployment (no process knew a token) starts empty, like a local
  :class:`~flashkit.ratelimit.RateLimiter` does. A waiter whose reservation predates a restart
  re-checks the token when it wakes (unless a call of this process confirmed it within the grace)
  and queues again if the reservation was lost.
- ``on_unavailable="fail_closed"`` (default): while Redis does not answer, every decision raises
  :class:`~flashkit.errors.RateLimitError` (``code="limiter_unavailable"``, retryable,
  ``retry_after`` = time to the next probe) naming the URL without credentials. Calls within
  ``probe_interval`` of a failure fail at once without touching the network.
- ``on_unavailable="local_fallback"``: the process logs one WARNING (logger
  ``flashkit.ratelimit``) per outage and refuses for ``fallback_hold`` seconds (default ``period +
  grace``: it cannot know what the others were admitted just before), then admits on an in-process
  :class:`~flashkit.ratelimit.RateLimiter` at ``floor(rate / expected_processes)`` (at least 1) per
  period. It probes Redis at most every ``probe_interval`` seconds (the next decision tries), and
  no local admission is scheduled past the next probe. When Redis answers again the process
  replays its local admissions of the last period into the log (at their times translated to
  server time), and, unless the outage was shorter than the others' hold, marks the limiter so
  every key carries a phantom entry for the other processes' local shares (``(expected_processes -
  1) * floor(rate / expected_processes)`` units) until ``period + probe_interval`` after that:
  they may still be admitting locally until their own probe. So, for ``sliding_window``, the union
  of all processes stays within ``rate`` per window across outages and restarts. For
  ``token_bucket``/``gcra`` the fallback keeps each process to its share of the rate but the union
  can burst beyond ``burst`` (a strict pacer cannot be split between processes).
  Not covered: a partition where some processes still reach Redis while others fall back (the
  union may then exceed ``rate`` by the fallback shares), and a server whose memory policy evicts
  keys without expiry (``{…}:meta``); use ``noeviction`` or a ``volatile-*`` policy.

Connections: one sync client and, per event loop, one ``redis.asyncio`` client (closed by
:meth:`RedisRateLimiter.aclose`, or when its loop shuts down, e.g. at the end of ``asyncio.run``).
Scripts do not go through the client's command path: each call packs ``EVALSHA`` itself and sends
it on a connection the limiter holds (made by the client's pool, one per concurrent caller). The
generic path (pool checkout, retry wrapper, response callbacks, packing) cost ~40 us of a ~130 us
decision here, more than the script. A call is retried once, at once, only when its connection
broke (a pooled connection to a restarted server); never after a timeout, when the script may have
run. Wrong credentials or ACL
permissions, a foreign value under the limiter's keys or a script error raise ``RateLimitError``
(``code="limiter_error"``, not retryable): they are not outages. Passwords never appear in errors,
logs or ``repr``. Needs Redis >= 6.2 (``ZADD GT``) and redis-py >= 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import re
import threading
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

from flashkit._flow import run_async, run_sync
from flashkit.clock import Clock, default_clock
from flashkit.errors import RateLimitError, ValidationError, redact
from flashkit.ratelimit import (
    Algorithm,
    LimiterStats,
    RateLimiter,
    RateLimitResult,
    _check_actual,
    _check_count,
    _check_number,
    _Counters,
)

__all__ = ["RedisDecision", "RedisRateLimiter"]

logger = logging.getLogger("flashkit.ratelimit")

T = TypeVar("T")
OnUnavailable = Literal["fail_closed", "local_fallback"]
Source = Literal["redis", "lease", "fallback"]

_ALGORITHMS: Final = ("sliding_window", "token_bucket", "gcra")
_EPS: Final = 1e-9
_DRIFT: Final = 1e-4  # how fast two clocks may drift apart (s/s), ageing offset bounds
_SCAN: Final = 4096  # entries (and candidate times) a wake's search reads at most
_NO_LIMIT: Final = "1e18"  # "no max_wait" in a script argument (Lua's tonumber has no inf)


class RedisDecision(NamedTuple):
    """One decision of a :class:`RedisRateLimiter`, with where and when it was made.

    ``allowed``, ``remaining``, ``retry_after``, ``reset_at`` as in
    :class:`~flashkit.ratelimit.RateLimitResult` (``reset_at`` on this process's ``clock``).
    ``server_time``: Redis server time (Unix seconds) at which the admitted units count: the
    decision's ``TIME``, or for a waited ``acquire`` the time its reservation came due (sliding
    window: or, when it confirmed on waking, the ``TIME`` of that check); estimated
    from this process's clock (within a round trip) when ``source`` is ``"lease"`` or
    ``"fallback"``; NaN when refused (or, for a fallback admission, when this process has never
    reached the server). ``waited``: seconds the call slept. ``source``: who decided:
    ``"redis"`` (a script), ``"lease"`` (units of a lease held by this process) or ``"fallback"``
    (the local limiter during an outage).
    """

    allowed: bool
    remaining: float
    retry_after: float
    reset_at: float
    server_time: float
    waited: float
    source: Source

    def result(self) -> RateLimitResult:
        """The decision as a plain :class:`~flashkit.ratelimit.RateLimitResult`."""
        return RateLimitResult(self.allowed, self.remaining, self.retry_after, self.reset_at)


# --- Lua ------------------------------------------------------------------------------------
# Scripts are generated per limiter: @GRACE@, @P1@, @P2@, @FBU@ and @LEASE_DURATION@ are
# replaced by the limiter's constants (see RedisRateLimiter._script_sources), so a call only
# carries what changes. Every script starts with the prelude: server time, then the epoch check
# on KEYS[1] (meta). ARGV[1]: a fixed "now" for tests ("" = TIME), ARGV[2]: the epoch token this
# client knows ("" = none), ARGV[3]: a fresh token to use if there is none.
_PRELUDE: Final = """
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
local grace = @GRACE@
"""

# Marker for the other processes' local admissions after an outage (resume scripts).
# @FBU@: their units (0: none), ARGV[4]: seconds the marker lasts ("" = do not set).
_MARK: Final = """
if ARGV[4] ~= '' and @FBU@ > 0 then
  local mu = now + tonumber(ARGV[4])
  if not fb_until or mu > fb_until then
    redis.call('HSET', meta, 'fb_until', mu)
    fb_until = mu
  end
end
"""

# Sliding window state: KEYS[2] log (zset "<id>:<units>" -> score), KEYS[3] st (total, tail, hi).
# @P1@ rate, @P2@ period, @FBU@ phantom units for the others' fallback shares.
_SW_LOAD: Final = """
local rate = @P1@
local period = @P2@
local log = KEYS[2]
local st = KEYS[3]
local s = redis.call('HMGET', st, 'total', 'tail', 'hi', 'pr', 'exp')
local total = tonumber(s[1]) or 0
local tail = tonumber(s[2]) or 0
local hi = tonumber(s[3]) or 0
local pruned_at = tonumber(s[4]) or 0
local expires = tonumber(s[5]) or 0
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
if restart_at and now < restart_at + grace + period then
  local at = restart_at + grace
  if redis.call('ZADD', log, 'GT', at, '~rs:@P1@') == 1 then total = total + rate end
  if at > hi then hi = at end
  dirty = true
end
local fbu = @FBU@
if fb_until and fbu > 0 and now < fb_until + period then
  if redis.call('ZADD', log, 'GT', fb_until, '~fb:@FBU@') == 1 then
    total = total + fbu
  end
  if fb_until > hi then hi = fb_until end
  dirty = true
end
"""

# The earliest time ``n`` more units fit, behind the FIFO tail (for a grant or a reservation).
_SW_EARLIEST: Final = """
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
-- it relies on the room of a reservation due within @MARGIN@ s before now (entries scored up to
-- at - period leave its window; that one may still be used late and move into it).
local function reservation(at, id, units_text)
  if at - now > @PROVISIONAL@ then
    local near = redis.call('ZRANGEBYSCORE', log, '(' .. fmt(now - @MARGIN@), fmt(at - period),
                            'LIMIT', 0, @SCAN@)
    if #near >= @SCAN@ then return '&' .. id .. ':' .. units_text end
    for i = 1, #near do
      local c = string.sub(near[i], 1, 1)
      if c == '+' or c == '&' then return '&' .. id .. ':' .. units_text end
    end
  end
  return '+' .. id .. ':' .. units_text
end
"""

# The keys live until every entry has left the window, plus slack: their expiry is pushed out
# (by a period more than needed) only when it falls short, not on every decision.
_SW_SAVE: Final = """
if dirty then
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
"""

# Decide: ARGV[4] n, ARGV[5] max_wait, ARGV[6] entry id, ARGV[7] lease units (0: no lease),
# ARGV[8] number of lease returns, then (member, units kept) pairs. Lease duration @LEASE_DURATION@.
# Returns "allowed remaining retry_after reset_in now_s now_us at epoch member units_leased" (one
# string, see reply() in the prelude; member empty when refused).
_SW_DECIDE: Final = (
    _PRELUDE
    + _SW_LOAD
    + """
if now - pruned_at >= period / 16 then prune() end
local j = 9
for i = 1, tonumber(ARGV[8]) do
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
local n = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5])
local lease = tonumber(ARGV[7])
local at = now
local queued = nil
if tail > now or total + n - rate > 1e-9 then
  -- no room now (or others queued): the search, defined here so a decision with room skips it
"""
    + _SW_EARLIEST
    + """  at = earliest(n)
  if at > now and at - now <= max_wait + 1e-9 then queued = reservation(at, ARGV[6], ARGV[4]) end
end
local allowed = 0
local retry_after = 0
local member = ''
local granted = 0
if at <= now and lease > 0 then
  granted = math.min(lease, rate - total)
  if granted < n then granted = n end
  member = '^' .. ARGV[6] .. ':' .. fmt(granted)  -- '^': a lease (see _SW_ADJUST)
  local expires = now + @LEASE_DURATION@
  redis.call('ZADD', log, expires, member)
  total = total + granted
  if expires > hi then hi = expires end
  allowed = 1
  dirty = true
elseif at - now <= max_wait + 1e-9 then
  member = queued or (ARGV[6] .. ':' .. ARGV[4])
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
"""
    + _SW_SAVE
    + """
local remaining = rate - total
if tail > now or remaining < 0 then remaining = 0 end
local reset_in = (hi - now) + period
if reset_in < 0 then reset_in = 0 end
return reply(allowed, remaining, retry_after, reset_in, at, member, granted)
"""
)

# A sliding-window waiter woke (see RedisRateLimiter._wait_turn): ARGV[4] n, ARGV[5] max_wait,
# ARGV[6] its member, ARGV[7] its due time, ARGV[8] the epoch it was reserved in. A firm
# reservation, still there, woken within @TOLERANCE@ s of its due time stands. Otherwise its units
# count from now: the member leaves its slot and takes the earliest time x >= now at which every
# window holding x has room, counting what is used up to now (due grants too) and the firm grants
# after it; provisional ones ('&': reserved more than @PROVISIONAL@ s ahead) check again when they
# wake, so this earlier waiter goes first. The search is bounded (@SCAN@ entries read, as many
# candidate times): past that, or when nothing fits sooner, it queues behind the FIFO tail, which
# counts every entry. Refused when x is more than max_wait away. Same reply as decide.
_SW_WAKE: Final = (
    _PRELUDE
    + _SW_LOAD
    + _SW_EARLIEST
    + """
prune()
local n = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5])
local member = ARGV[6]
local id = string.match(member, '^[+&]?(.*):[^:]*$')
local sc = redis.call('ZSCORE', log, member)
local at = now
local allowed = 0
local retry_after = 0
if sc and string.sub(member, 1, 1) ~= '&' and epoch == ARGV[8]
    and now - tonumber(ARGV[7]) <= @TOLERANCE@ then
  at = tonumber(sc)  -- it stands, now known to be used: settled (no mark)
  redis.call('ZREM', log, member)
  member = id .. ':' .. ARGV[4]
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
                           @SCAN@)
    local ps, pc = {}, {}
    for i = 1, #old, 2 do
      ps[#ps + 1] = tonumber(old[i + 1])
      pc[#pc + 1] = (pc[#pc] or 0) + units(old[i])
    end
    local function count(s, y)  -- how many of the sorted scores s are <= y
      local lo, hi = 0, #s
      while lo < hi do
        local mid = math.floor((lo + hi + 1) / 2)
        if s[mid] <= y then lo = mid else hi = mid - 1 end
      end
      return lo
    end
    local function upto(s, c, y)  -- units of the entries scored <= y (of those read)
      return c[count(s, y)] or 0
    end
    local function held(w)  -- counted units in (w - period, w], for w >= now
      return used - upto(ps, pc, w - period) + upto(fs, fc, w) - upto(fs, fc, w - period)
    end
    local budget = @SCAN@
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
    member = id .. ':' .. ARGV[4]
    if at > now then member = reservation(at, id, ARGV[4]) end
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
"""
    + _SW_SAVE
    + """
local remaining = rate - total
if tail > now or remaining < 0 then remaining = 0 end
local reset_in = (hi - now) + period
if reset_in < 0 then reset_in = 0 end
return reply(allowed, remaining, retry_after, reset_in, at, member, 0)
"""
)

# Give units back: KEYS[1] log, KEYS[2] st; ARGV: (member, units kept) pairs. Returns the units.
_SW_REFUND: Final = """
local back = 0
local total = tonumber(redis.call('HGET', KEYS[2], 'total'))
for j = 1, #ARGV, 2 do
  local mem = ARGV[j]
  local sc = redis.call('ZSCORE', KEYS[1], mem)
  if sc then
    redis.call('ZREM', KEYS[1], mem)
    local u = tonumber(string.match(mem, ':([^:]*)$')) or 0
    local keep = tonumber(ARGV[j + 1])
    if keep > 0 then
      redis.call('ZADD', KEYS[1], sc, string.match(mem, '^(.*):[^:]*$') .. ':' .. ARGV[j + 1])
    else
      keep = 0
    end
    back = back + u - keep
  end
end
if total and back > 0 then
  total = total - back
  if total < 0 then total = 0 end
  redis.call('HSET', KEYS[2], 'total', total)
end
return string.format('%.17g', back)
"""

# Resume after an outage: ARGV[4] marker ("" = none), ARGV[5] id prefix, then (ago, units) pairs.
_SW_RESUME: Final = (
    _PRELUDE
    + _MARK
    + _SW_LOAD
    + """
prune()
local k = 0
for j = 6, #ARGV, 2 do
  local at = now - tonumber(ARGV[j])
  if at > now - period then
    k = k + 1
    redis.call('ZADD', log, at, ARGV[5] .. '-' .. k .. ':' .. ARGV[j + 1])
    total = total + tonumber(ARGV[j + 1])
    if at > hi then hi = at end
    dirty = true
  end
end
"""
    + _SW_SAVE
    + "return {fmt(now), epoch}\n"
)

# Bucket state (GCRA, token bucket) must outlive the time it would read as absent (tat; a full
# bucket): its expiry, kept in field 'exp', is pushed out (past twice what is needed) only when it
# falls short, so a hot decision writes one hash and no PEXPIRE. Call after writing the hash.
_BUCKET_EXPIRY: Final = """
local function keep_until(until_)
  if until_ + 1 > expires then
    expires = until_ + (until_ - now) + 2
    redis.call('HSET', st, 'exp', expires)
    redis.call('PEXPIRE', st, math.ceil((expires - now) * 1000))
  end
end
"""

# GCRA state: KEYS[2] st (tat, last id, tat before the last grant). @P1@ interval, @P2@ cap.
_GCRA_LOAD: Final = """
local interval = @P1@
local cap = @P2@
local st = KEYS[2]
local s = redis.call('HMGET', st, 'tat', 'exp')
local tat = tonumber(s[1]) or now
local expires = tonumber(s[2]) or 0
if restart_at then
  local floor = restart_at + grace + cap * interval
  if floor > now and floor > tat then tat = floor end
end
"""

_GCRA_DECIDE: Final = (
    _PRELUDE
    + _GCRA_LOAD
    + _BUCKET_EXPIRY
    + """
local n = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5])
local at = tat - (cap - n) * interval
if at < now then at = now end
local allowed = 0
local retry_after = 0
if at - now <= max_wait + 1e-9 then
  local base = tat
  if at > base then base = at end
  tat = base + n * interval
  redis.call('HSET', st, 'tat', tat, 'last', ARGV[6], 'before', s[1] or '')
  keep_until(tat)
  allowed = 1
else
  retry_after = at - now
end
local fill = tat - now
if fill < 0 then fill = 0 end
local remaining = cap - fill / interval
if remaining < 0 then remaining = 0 end
local reset_in = tat - now
if reset_in < 0 then reset_in = 0 end
return reply(allowed, remaining, retry_after, reset_in, at, ARGV[6], 0)
"""
)

_GCRA_RESUME: Final = (
    _PRELUDE
    + _GCRA_LOAD
    + _BUCKET_EXPIRY
    + """
for j = 6, #ARGV, 2 do
  local at = now - tonumber(ARGV[j])
  if at > tat then tat = at end
  tat = tat + tonumber(ARGV[j + 1]) * interval
end
if tat > now then
  redis.call('HSET', st, 'tat', tat, 'last', '', 'before', '')
  keep_until(tat)
end
return {fmt(now), epoch}
"""
)

# Refund the latest grant only (KEYS[1] st; ARGV[1] its id): restore the state before it.
_BUCKET_REFUND: Final = """
local s = redis.call('HMGET', KEYS[1], 'last', 'before')
if s[1] ~= ARGV[1] then return '0' end
if not s[2] or s[2] == '' then
  redis.call('DEL', KEYS[1])
elseif string.find(s[2], '|', 1, true) then
  local level, stamp = string.match(s[2], '^([^|]*)|(.*)$')
  redis.call('HSET', KEYS[1], 'level', level, 'stamp', stamp, 'last', '', 'before', '')
else
  redis.call('HSET', KEYS[1], 'tat', s[2], 'last', '', 'before', '')
end
return '1'
"""

# Token bucket state: KEYS[2] st (level at stamp; absent = full). @P1@ refill/s, @P2@ cap.
_TB_LOAD: Final = """
local refill = @P1@
local cap = @P2@
local st = KEYS[2]
local s = redis.call('HMGET', st, 'level', 'stamp', 'exp')
local level = tonumber(s[1])
local stamp = tonumber(s[2])
local expires = tonumber(s[3]) or 0
if restart_at then
  local empty_at = restart_at + grace
  local floor = empty_at + cap / refill
  if floor > now then
    local full_at = now
    if level then full_at = stamp + (cap - level) / refill end
    if floor > full_at then
      level = 0
      stamp = empty_at
    end
  end
end
local function level_at(t)
  if not level then return cap, t end
  local when = t
  if stamp > t then when = stamp end
  local l = level + (when - stamp) * refill
  if l > cap then l = cap end
  return l, when
end
"""

_TB_DECIDE: Final = (
    _PRELUDE
    + _TB_LOAD
    + _BUCKET_EXPIRY
    + """
local n = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5])
local l, when = level_at(now)
local at = when
if l < n - 1e-9 then at = when + (n - l) / refill end
local allowed = 0
local retry_after = 0
if at - now <= max_wait + 1e-9 then
  local before = ''
  if s[1] then before = s[1] .. '|' .. s[2] end
  local l2, w2 = level_at(at)
  level = l2 - n
  stamp = w2
  redis.call('HSET', st, 'level', level, 'stamp', stamp, 'last', ARGV[6],
             'before', before)
  keep_until(stamp + (cap - level) / refill)
  allowed = 1
else
  retry_after = at - now
end
l, when = level_at(now)
local remaining = l
if when > now or remaining < 0 then remaining = 0 end
return reply(allowed, remaining, retry_after, (when - now) + (cap - l) / refill, at, ARGV[6], 0)
"""
)

_TB_RESUME: Final = (
    _PRELUDE
    + _TB_LOAD
    + _BUCKET_EXPIRY
    + """
local changed = false
for j = 6, #ARGV, 2 do
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
"""
)

_CONFIRM: Final = _PRELUDE + "return {fmt(now), epoch}\n"

# Reconcile an estimate (adjust, key form): ARGV[4] delta = actual - estimate, ARGV[5] the latest
# server time a refund may come from ("" = the key's oldest units first), ARGV[6] an entry id.
# A charge (delta > 0) is a new entry at max(now, FIFO tail). A refund (delta < 0) comes from
# settled entries in the window scored no later than ARGV[5] (newest first; oldest first
# without it): not from reservations ('+', '&': their waiters still need them), leases ('^':
# used before their score) or phantoms ('~'). Why no later than the caller's grant is safe: the
# log then drops units at te <= tc; every window that can still admit (ends after now >= tc)
# and holds te also holds tc, where the caller's real use is the estimate minus the refund.
# Reads at most @SCAN@ entries. Returns the units charged or refunded.
_SW_ADJUST: Final = (
    _PRELUDE
    + _SW_LOAD
    + """
prune()
local delta = tonumber(ARGV[4])
local done = 0
if delta > 0 then
  local at = now
  if tail > now then at = tail end
  redis.call('ZADD', log, at, ARGV[6] .. ':' .. ARGV[4])
  total = total + delta
  if at > hi then hi = at end
  done = delta
  dirty = true
elseif delta < 0 then
  local left = -delta
  local upto = now
  local newest = ARGV[5] ~= ''
  if newest and tonumber(ARGV[5]) < now then upto = tonumber(ARGV[5]) end
  local low = '(' .. fmt(now - period)
  local skipped = 0
  local size = 8
  while left > 1e-9 and skipped < @SCAN@ do
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
"""
    + _SW_SAVE
    + "return fmt(done)\n"
)

# Charge a bucket (adjust with usage above the estimate): ARGV[4] units, at now.
_GCRA_CHARGE: Final = (
    _PRELUDE
    + _GCRA_LOAD
    + _BUCKET_EXPIRY
    + """
if tat < now then tat = now end
tat = tat + tonumber(ARGV[4]) * interval
redis.call('HSET', st, 'tat', tat, 'last', '', 'before', '')
keep_until(tat)
return ARGV[4]
"""
)

_TB_CHARGE: Final = (
    _PRELUDE
    + _TB_LOAD
    + _BUCKET_EXPIRY
    + """
local l, w = level_at(now)
level = l - tonumber(ARGV[4])
stamp = w
redis.call('HSET', st, 'level', level, 'stamp', stamp, 'last', '', 'before', '')
keep_until(stamp + (cap - level) / refill)
return ARGV[4]
"""
)


_SCRIPTS: Final = {
    "sliding_window": (_SW_DECIDE, _SW_REFUND, _SW_RESUME, _CONFIRM, _SW_ADJUST, _SW_WAKE),
    "token_bucket": (_TB_DECIDE, _BUCKET_REFUND, _TB_RESUME, _CONFIRM, _TB_CHARGE),
    "gcra": (_GCRA_DECIDE, _BUCKET_REFUND, _GCRA_RESUME, _CONFIRM, _GCRA_CHARGE),
}
_DECIDE, _REFUND, _RESUME, _CONFIRM_SCRIPT, _ADJUST, _WAKE = range(6)
_GO, _PROBE, _LOCAL = range(3)


# --- I/O requests -----------------------------------------------------------------------------
# The decision logic is written once, as generators that yield what they need done (a script
# call, a sleep) and receive the answer; a sync and an async driver run them.
class _Eval(NamedTuple):
    script: int
    keys: list[str]
    args: list[Any]


class _Reply(NamedTuple):
    """A decision script's reply (``reply()`` in the Lua prelude), times in server seconds."""

    allowed: bool
    remaining: float
    retry_after: float
    reset_in: float  # seconds from server_now
    server_now: float
    at: float  # when the admitted units count
    epoch: bytes
    member: bytes
    granted: float  # units leased (0: no lease)

    @classmethod
    def decode(cls, raw: bytes) -> _Reply:
        f = raw.split(b" ")
        now = float(f[4]) + float(f[5]) / 1e6  # as the script computes it
        at = now if f[6] == b"=" else float(f[6])
        return cls(
            f[0] == b"1", float(f[1]), float(f[2]), float(f[3]), now, at, f[7], f[8], float(f[9])
        )


class _Sleep(NamedTuple):
    seconds: float


_Op = _Eval | _Sleep
_Flow = Generator[_Op, Any, T]


# Forks seen by this process: a child must not use its parent's sockets (checked per call; cheaper
# than os.getpid()).
_forks = [0]
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


class _Line:
    """A redis-py client, this limiter's scripts on it, and the connections its calls use.

    Connections are made by the client's pool (same settings) and kept here, not checked in and
    out of the pool per call: an idle stack (``list.pop``/``append`` are atomic, so each thread
    or task uses its own connection). Closed with the client.
    """

    __slots__ = ("client", "forks", "idle", "loop", "made", "scripts")

    def __init__(
        self, client: Any, scripts: tuple[Any, ...], loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.client = client
        self.scripts = scripts
        self.loop = loop
        self.forks = _forks[0]
        self.idle: list[Any] = []
        self.made: list[Any] = []

    def take(self) -> Any:
        try:
            return self.idle.pop()
        except IndexError:
            connection = self.client.connection_pool.make_connection()
            self.made.append(connection)
            return connection

    def close(self) -> None:
        try:
            for connection in self.made:
                connection.disconnect()
        finally:
            self.client.close()

    async def aclose(self) -> None:
        try:
            for connection in self.made:
                await connection.disconnect()
        finally:
            await self.client.aclose()

    def abandon(self) -> None:
        """Close an asyncio client's sockets without its (gone) event loop."""
        pool = getattr(self.client, "connection_pool", None)
        connections = list(self.made)
        for attr in ("_available_connections", "_in_use_connections"):
            connections += list(getattr(pool, attr, ()) or ())
        for connection in connections:
            try:
                connection._close()
            except Exception:  # noqa: S112 - best effort on a dead loop
                continue


class _Lease:
    __slots__ = ("left", "member", "offset", "reset_at", "units", "until")

    def __init__(
        self, member: bytes, units: float, left: float, until: float, offset: float, reset: float
    ) -> None:
        self.member = member
        self.units = units
        self.left = left
        self.until = until
        self.offset = offset
        self.reset_at = reset


_CREDENTIALS: Final = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^@/\s]*@")


def _safe_url(url: str) -> str:
    """``url`` without user, password or query (which may hold ``password=``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        if parts.username is not None or parts.password is not None:
            netloc = f"***@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return _scrub(url.split("?", 1)[0])


def _scrub(text: str) -> str:
    return redact(_CREDENTIALS.sub(r"\1***@", text))


class RedisRateLimiter:
    """``rate`` units per ``period`` seconds per key, shared through Redis by every process.

    See the module docstring for semantics, storage and outage behaviour.

    Args:
        redis_url: ``redis://[user:password@]host:port/db``, ``rediss://…`` or ``unix://…``.
        rate, period, algorithm, burst: as for :class:`~flashkit.ratelimit.RateLimiter`.
        key_prefix: prefix of every Redis key (``"flashkit:rl"``).
        name: the limiter's name in keys, errors and logs; processes sharing a limit use the same
            ``key_prefix``, ``name`` and settings.
        on_unavailable: ``"fail_closed"`` (raise while Redis is unreachable) or
            ``"local_fallback"`` (admit on a local limiter at ``rate / expected_processes``).
        expected_processes: how many processes share the limit (sizes the fallback share).
        fallback_hold: seconds to refuse after an outage starts before admitting locally
            (default ``period + lease_duration``).
        probe_interval: at most one attempt to reach Redis per this many seconds while it is
            unreachable (1.0).
        lease: units one round trip may take for this process (sliding window only; default
            None: one round trip per decision).
        lease_duration: seconds a lease may be used after its request was sent (0.1); also the
            grace a grant may be used after the last contact with Redis (see the module docstring).
        socket_timeout: seconds to wait for Redis (connect and reply) before calling it
            unavailable (0.5).
        clock: the local :class:`~flashkit.clock.Clock` for sleeping, leases and the fallback.
    """

    def __init__(
        self,
        redis_url: str,
        rate: float,
        period: float,
        algorithm: Algorithm = "sliding_window",
        burst: float | None = None,
        *,
        key_prefix: str = "flashkit:rl",
        name: str = "redis",
        on_unavailable: OnUnavailable = "fail_closed",
        expected_processes: int = 1,
        fallback_hold: float | None = None,
        probe_interval: float = 1.0,
        lease: float | None = None,
        lease_duration: float = 0.1,
        socket_timeout: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        where = "RedisRateLimiter"
        if not isinstance(redis_url, str) or not redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            shown = _safe_url(redis_url) if isinstance(redis_url, str) else repr(redis_url)
            raise ValidationError(
                f"{where}(redis_url={shown!r}): use redis://host:port/db, rediss://… or unix://…",
                code="invalid_config",
            )
        self.url = _safe_url(redis_url)
        self._url = redis_url
        self.rate = _check_number(rate, f"{where} rate", "units per period, e.g. 60")
        self.period = _check_number(period, f"{where} period", "seconds, e.g. 60.0")
        if algorithm not in _ALGORITHMS:
            raise ValidationError(
                f"{where}(algorithm={algorithm!r}): unknown algorithm; use one of "
                f"{list(_ALGORITHMS)}",
                code="invalid_config",
            )
        self.algorithm: Algorithm = algorithm
        self.burst = burst
        if algorithm == "sliding_window":
            if burst is not None:
                raise ValidationError(
                    f"{where}(algorithm='sliding_window', burst=...): a sliding window admits up "
                    "to `rate` units at once already; `burst` applies to 'token_bucket' and 'gcra'",
                    code="invalid_config",
                )
            self.max_count = self.rate
        elif burst is None:
            self.max_count = 1.0
        else:
            self.max_count = _check_number(burst, f"{where} burst", "the bucket size in units")
            if self.max_count < 1.0:
                raise ValidationError(
                    f"{where}(burst={burst!r}): the bucket must hold at least one unit",
                    code="invalid_config",
                )
        for label, text in (("key_prefix", key_prefix), ("name", name)):
            if not isinstance(text, str) or not text:
                raise ValidationError(
                    f"{where}({label}={text!r}): must be a non-empty string", code="invalid_config"
                )
        self.key_prefix = key_prefix
        self.name = name
        if on_unavailable not in ("fail_closed", "local_fallback"):
            raise ValidationError(
                f"{where}(on_unavailable={on_unavailable!r}): use 'fail_closed' or "
                "'local_fallback'",
                code="invalid_config",
            )
        self.on_unavailable: OnUnavailable = on_unavailable
        if (
            isinstance(expected_processes, bool)
            or not isinstance(expected_processes, int)
            or expected_processes < 1
        ):
            raise ValidationError(
                f"{where}(expected_processes={expected_processes!r}): an int >= 1, the number of "
                "processes sharing this limit",
                code="invalid_config",
            )
        self.expected_processes = expected_processes
        self.lease_duration = _check_number(
            lease_duration, f"{where} lease_duration", "seconds, e.g. 0.1"
        )
        self.probe_interval = _check_number(
            probe_interval, f"{where} probe_interval", "seconds, e.g. 1.0"
        )
        self.socket_timeout = _check_number(
            socket_timeout, f"{where} socket_timeout", "seconds, e.g. 0.5"
        )
        self._grace = self.lease_duration
        # Confirm on wake (see _wait_turn): how late a waiter may use its grant without asking
        # again, and how far ahead a reservation is provisional (re-checked when it wakes).
        self._tolerance = max(2e-3, self.period / 1024)
        self._margin = max(self.period / 8, 2 * self._tolerance)
        self.fallback_hold = (
            self.period + self._grace
            if fallback_hold is None
            else _check_number(
                fallback_hold, f"{where} fallback_hold", "seconds, e.g. the period", allow_zero=True
            )
        )
        self.lease: float | None = None
        if lease is not None:
            if algorithm != "sliding_window":
                raise ValidationError(
                    f"{where}(lease={lease!r}): leases need algorithm='sliding_window'",
                    code="invalid_config",
                )
            units = _check_number(lease, f"{where} lease", "units per round trip, e.g. 10")
            if not 1.0 <= units <= self.rate:
                raise ValidationError(
                    f"{where}(lease={lease!r}): a lease takes between 1 and rate={self.rate:g} "
                    "units",
                    code="invalid_config",
                )
            self.lease = units
        self.clock = clock if clock is not None else default_clock()
        self._now = self.clock.now

        import redis
        import redis.exceptions as rex

        self._redis_version = redis.__version__
        self._unavailable_errors: tuple[type[BaseException], ...] = (
            rex.ConnectionError,  # also BusyLoadingError (a restarted server loading)
            rex.TimeoutError,
            rex.ReadOnlyError,  # a replica after a failover
            rex.TryAgainError,
            rex.ClusterDownError,  # also MasterDownError
            OSError,
        )
        self._redis_errors: tuple[type[BaseException], ...] = (rex.RedisError, OSError)
        self._connection_errors: tuple[type[BaseException], ...] = (rex.ConnectionError,)
        self._config_errors: tuple[type[BaseException], ...] = (
            rex.AuthenticationError,  # (a ConnectionError subclass: checked first)
            rex.AuthorizationError,
            rex.AuthenticationWrongNumberOfArgsError,
            rex.NoPermissionError,
        )

        # Fallback: floor(rate / processes) per period (at least 1), same algorithm.
        share = max(1, math.floor(self.rate / expected_processes))
        self.fallback_rate = float(share)
        self._fallback_units = (
            float(min(self.rate, (expected_processes - 1) * share))
            if algorithm == "sliding_window"
            else 0.0
        )
        fallback_burst = None if burst is None else max(1.0, self.max_count / expected_processes)
        self._fallback = RateLimiter(
            share, self.period, algorithm, fallback_burst, clock=self.clock, name=f"{name}.fallback"
        )

        tag = "{" + f"{key_prefix}:{name}" + "}"
        self._tag = tag
        self._meta = f"{tag}:meta"
        self._key_cache: dict[str, list[str]] = {}
        self._sources = self._script_sources()
        self._sync: _Line | None = None
        self._async: _Line | None = None
        self._guard: AsyncGenerator[None, None] | None = None
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._round_trips = 0
        # Wakes of sliding-window waiters: on time (no round trip), stood after a round trip,
        # moved to the server's now, queued again, refused (timeout).
        self._wakes = [0, 0, 0, 0, 0]
        self._ids = itertools.count()
        self._client_id = uuid.uuid4().hex[:12]
        # Epoch bookkeeping (see the module docstring).
        self._epoch = b""
        self._candidate = uuid.uuid4().hex
        self._epoch_seen_at = -math.inf  # local send time of the latest call that saw _epoch
        self._offset = math.nan  # server time - local clock, from the latest reply
        self._bounds = (-math.inf, math.inf, 0.0)  # its tightest bounds, and when (local clock)
        self._last_ok_sent = -math.inf
        # Outage state.
        self._down = False
        self._hold_until = -math.inf
        self._next_probe = -math.inf
        self._replays: deque[tuple[float, str, float]] = deque()  # (local time, key, units)
        # Leases: key -> leases held; key -> (member, units kept) to give back; keys in flight.
        self._leases: dict[str, list[_Lease]] = {}
        self._returns: dict[str, list[tuple[bytes, float]]] = {}
        self._lease_inflight: set[str] = set()
        # Tests only: a stand-in for the server's TIME (scripts then run at its time).
        self._server_clock: Callable[[], float] | None = None

    def _script_sources(self) -> tuple[str, ...]:
        """The scripts with this limiter's constants in place (Lua number literals)."""
        if self.algorithm == "sliding_window":
            p1, p2 = self.rate, self.period
        elif self.algorithm == "gcra":
            p1, p2 = self.period / self.rate, self.max_count
        else:
            p1, p2 = self.rate / self.period, self.max_count
        values = {
            "@TOLERANCE@": self._tolerance,
            "@PROVISIONAL@": self.period - self._margin,
            "@MARGIN@": self._margin,
            "@SCAN@": _SCAN,
            "@GRACE@": self._grace,
            "@P1@": p1,
            "@P2@": p2,
            "@FBU@": self._fallback_units,
            "@LEASE_DURATION@": self.lease_duration,
        }
        sources = []
        for source in _SCRIPTS[self.algorithm]:
            for placeholder, value in values.items():
                source = source.replace(placeholder, repr(float(value)))
            sources.append(source)
        return tuple(sources)

    def __repr__(self) -> str:
        burst = f", burst={self.burst}" if self.burst is not None else ""
        lease = f", lease={self.lease:g}" if self.lease is not None else ""
        return (
            f"RedisRateLimiter({self.url!r}, {self.rate:g}, {self.period:g}, "
            f"algorithm={self.algorithm!r}{burst}{lease}, name={self.name!r}, "
            f"on_unavailable={self.on_unavailable!r})"
        )

    # --- clients ----------------------------------------------------------------------------
    def _client_kwargs(self) -> dict[str, Any]:
        # Retries: one, at once, and only when the connection broke (a pooled connection to a
        # restarted server); never after a timeout, when the script may have run (a repeat after
        # a broken connection can at worst charge twice: conservative).
        return {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
        }

    def _sync_line(self) -> _Line:
        line = self._sync
        if line is None or line.forks != _forks[0]:
            import redis
            import redis.exceptions
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            with self._lock:
                line = self._sync
                if line is None or line.forks != _forks[0]:
                    # (after a fork the parent's sockets are left alone, as redis-py's pool does)
                    client = redis.Redis.from_url(
                        self._url,
                        retry=Retry(NoBackoff(), 1, (redis.exceptions.ConnectionError,)),
                        **self._client_kwargs(),
                    )
                    scripts = tuple(client.register_script(src) for src in self._sources)
                    line = self._sync = _Line(client, scripts)
        return line

    def _async_line(self) -> _Line:
        loop = asyncio.get_running_loop()
        line = self._async
        if line is None or line.loop is not loop or line.forks != _forks[0]:
            import redis.asyncio
            import redis.exceptions
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            if line is not None:
                line.abandon()  # its loop ended without shutting down async generators
            client = redis.asyncio.Redis.from_url(
                self._url,
                retry=Retry(NoBackoff(), 1, (redis.exceptions.ConnectionError,)),
                **self._client_kwargs(),
            )
            scripts = tuple(client.register_script(src) for src in self._sources)
            line = self._async = _Line(client, scripts, loop)
            # The client belongs to this loop: close it there when the loop shuts down
            # (asyncio.run finalizes live async generators before closing the loop).
            guard = self._close_with_loop(line)
            with contextlib.suppress(StopIteration):
                guard.__anext__().send(None)  # runs to its yield at once: now a live agen
            self._guard = guard
        return line

    async def _close_with_loop(self, line: _Line) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if self._async is line:
                self._async = None
            await line.aclose()

    # EVALSHA on a connection this limiter holds (see _Line), not through the client's command
    # path: redis-py's per-command machinery (pool checkout, retry wrapper, events, packing) costs
    # ~40 us a call here, more than the script.
    def _script_call(self, script: Any, op: _Eval) -> Generator[list[bytes], Any, Any]:
        """The round trips of one script call, as packed commands (each answered with its reply
        or its error). Same policy as the client's: one retry, at once, only when the connection
        broke (a pooled connection to a restarted server); never after a timeout, when the
        script may have run (a repeat after a broken connection can at worst charge twice)."""
        command = [_evalsha(script.sha, op)]
        retried = loaded = False
        while True:
            try:
                return (yield command)
            except self._redis_errors as error:
                if _no_script(error) and not loaded:
                    # the server lost its script cache (a restart)
                    yield [_pack(b"SCRIPT", b"LOAD", script.script.encode())]
                    loaded = True
                elif self._broken(error) and not retried:
                    retried = True
                else:
                    raise

    def _broken(self, error: BaseException) -> bool:
        """A broken connection (redis-py has closed it; the next send reconnects)."""
        return isinstance(error, self._connection_errors) and not isinstance(
            error, self._config_errors
        )

    def _eval_sync(self, op: _Eval) -> Any:
        line = self._sync_line()
        self._round_trips += 1
        connection = line.take()

        def round_trip(command: list[bytes]) -> Any:
            connection.send_packed_command(command, check_health=False)
            return connection.read_response()

        try:
            return run_sync(self._script_call(line.scripts[op.script], op), round_trip)
        finally:
            line.idle.append(connection)

    async def _eval_async(self, op: _Eval) -> Any:
        line = self._async_line()
        self._round_trips += 1
        connection = line.take()

        async def round_trip(command: list[bytes]) -> Any:
            await connection.send_packed_command(command, check_health=False)
            return await connection.read_response()

        try:
            return await run_async(self._script_call(line.scripts[op.script], op), round_trip)
        finally:
            line.idle.append(connection)

    def _drive_sync(self, flow: _Flow[T]) -> T:
        return run_sync(flow, self._perform_sync)

    async def _drive_async(self, flow: _Flow[T]) -> T:
        return await run_async(flow, self._perform_async)

    def _perform_sync(self, op: _Op) -> Any:
        if isinstance(op, _Eval):
            return self._eval_sync(op)
        self.clock.sleep(op.seconds)
        return None

    async def _perform_async(self, op: _Op) -> Any:
        if isinstance(op, _Eval):
            return await self._eval_async(op)
        await self.clock.async_sleep(op.seconds)
        return None

    # --- public API -------------------------------------------------------------------------
    def try_acquire(self, key: str = "default", count: float = 1) -> RateLimitResult:
        """Admit ``count`` units for ``key`` now if the shared limit allows; never waits.

        Also refuses while earlier callers are queued (first come, first served).
        """
        n = self._units(count, "try_acquire")
        return self._drive_sync(self._decide(key, n, None, False)).result()

    def try_acquire_detailed(self, key: str = "default", count: float = 1) -> RedisDecision:
        """:meth:`try_acquire`, answered as a :class:`RedisDecision`."""
        n = self._units(count, "try_acquire_detailed")
        return self._drive_sync(self._decide(key, n, None, False))

    async def try_acquire_async(self, key: str = "default", count: float = 1) -> RateLimitResult:
        """Async twin of :meth:`try_acquire` (the round trip does not block the loop)."""
        n = self._units(count, "try_acquire_async")
        return (await self._drive_async(self._decide(key, n, None, False))).result()

    async def try_acquire_detailed_async(
        self, key: str = "default", count: float = 1
    ) -> RedisDecision:
        """Async twin of :meth:`try_acquire_detailed`."""
        n = self._units(count, "try_acquire_detailed_async")
        return await self._drive_async(self._decide(key, n, None, False))

    async def acquire(
        self, key: str = "default", count: float = 1, timeout: float | None = None
    ) -> float:
        """Wait until ``count`` units are admitted for ``key``; return the seconds waited.

        Waiters are served in arrival order across processes. When the wait would exceed
        ``timeout`` seconds, raises :class:`~flashkit.errors.RateLimitError` (``code="timeout"``)
        at once, with ``retry_after``. If the waiting task is cancelled, its capacity is given
        back.
        """
        n = self._units(count, "acquire")
        return (await self._drive_async(self._decide(key, n, timeout, True))).waited

    def acquire_sync(
        self, key: str = "default", count: float = 1, timeout: float | None = None
    ) -> float:
        """Sync twin of :meth:`acquire` (blocks the calling thread)."""
        n = self._units(count, "acquire_sync")
        return self._drive_sync(self._decide(key, n, timeout, True)).waited

    async def acquire_detailed(
        self, key: str = "default", count: float = 1, timeout: float | None = None
    ) -> RedisDecision:
        """:meth:`acquire`, answered as a :class:`RedisDecision` (``server_time`` is when the
        units count: the decision, the reservation's due time, or the time a late or
        provisional waiter confirmed on waking)."""
        n = self._units(count, "acquire_detailed")
        return await self._drive_async(self._decide(key, n, timeout, True))

    def acquire_detailed_sync(
        self, key: str = "default", count: float = 1, timeout: float | None = None
    ) -> RedisDecision:
        """Sync twin of :meth:`acquire_detailed`."""
        n = self._units(count, "acquire_detailed_sync")
        return self._drive_sync(self._decide(key, n, timeout, True))

    def adjust(
        self,
        key: str,
        actual_count: float,
        *,
        estimated_count: float,
        admitted_at: float | None = None,
    ) -> float:
        """Reconcile an estimated cost with the actual one (the key form of
        :meth:`RateLimiter.adjust <flashkit.ratelimit.RateLimiter.adjust>`); returns the units
        to charge (> 0) or refund (< 0): ``actual_count - estimated_count``.

        ``admitted_at``: when the grant counts, on this limiter's time axis — the server's: its
        :attr:`RedisDecision.server_time` (from ``acquire_detailed`` / ``try_acquire_detailed``).
        The refund then comes from the newest settled units admitted no later than that, usually
        the grant itself; without it, from the key's oldest units.
        Refunds need ``sliding_window``: a bucket's schedule was shaped by the units (they are
        forfeited, counted in ``stats.forfeited_units``); charges apply to every algorithm. Best
        effort: when Redis does not answer nothing changes (a refund is forfeited). Queued
        waiters are not pulled forward (they wake at their reserved time).
        """
        return self._drive_sync(self._adjust(key, actual_count, estimated_count, admitted_at))

    async def adjust_async(
        self,
        key: str,
        actual_count: float,
        *,
        estimated_count: float,
        admitted_at: float | None = None,
    ) -> float:
        """Async twin of :meth:`adjust`."""
        return await self._drive_async(
            self._adjust(key, actual_count, estimated_count, admitted_at)
        )

    @property
    def stats(self) -> LimiterStats:
        """A :class:`~flashkit.ratelimit.LimiterStats` snapshot (this process's decisions)."""
        with self._lock:
            return self._counters.snapshot()

    @property
    def round_trips(self) -> int:
        """Script calls this process has sent (about, under threads)."""
        return self._round_trips

    @property
    def available(self) -> bool:
        """False while this process considers Redis unreachable (failing closed or falling back)."""
        return not self._down

    def close(self) -> None:
        """Give back unused lease units and close the sync connections (best effort)."""
        if self._sync is not None:
            try:
                self._drive_sync(self._give_back_leases())
            finally:
                line, self._sync = self._sync, None
                line.close()

    async def aclose(self) -> None:
        """Give back unused lease units and close all connections. (The async connections are
        also closed when their event loop shuts down, e.g. at the end of ``asyncio.run``.)"""
        if self._async is not None:
            line = self._async
            running = line.loop is asyncio.get_running_loop()
            try:
                if running:
                    await self._drive_async(self._give_back_leases())
            finally:
                self._async = None
                guard, self._guard = self._guard, None
                if running and guard is not None:
                    await guard.aclose()  # closes the line
                else:
                    line.abandon()
        self.close()

    def __enter__(self) -> RedisRateLimiter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> RedisRateLimiter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- the decision flow ------------------------------------------------------------------
    def _units(self, count: float, where: str) -> float:
        n = _check_count(count, f"{self.name}.{where}")
        if n > self.max_count + _EPS:
            what = (
                f"the limit admits at most {self.rate:g} units per {self.period:g} s"
                if self.algorithm == "sliding_window"
                else f"the bucket holds {self.max_count:g} unit(s); pass burst >= {n:g} (not "
                "strict) or use algorithm='sliding_window'"
            )
            raise ValidationError(
                f"{self.name}: a request of {n:g} units can never be admitted: {what}",
                code="request_too_large",
                details={"count": n, "rate": self.rate, "period": self.period},
            )
        return n

    def _prelude(self) -> list[Any]:
        override = "" if self._server_clock is None else repr(float(self._server_clock()))
        return [override, self._epoch, self._candidate]

    def _keys(self, key: str) -> list[str]:
        """The script keys of a limit key (cached: a decision needs them every time; read-only)."""
        keys = self._key_cache.get(key)
        if keys is None:
            if len(self._key_cache) >= 4096:
                self._key_cache.clear()
            tag = self._tag
            keys = self._key_cache[key] = (
                [self._meta, f"{tag}:{key}:log", f"{tag}:{key}:st"]
                if self.algorithm == "sliding_window"
                else [self._meta, f"{tag}:{key}:st"]
            )
        return keys

    def _saw(self, epoch: bytes, sent: float, server_now: float, received: float) -> None:
        """Bookkeeping after every successful script call."""
        if epoch != self._epoch:
            self._epoch = epoch
            if epoch == self._candidate.encode():
                self._candidate = uuid.uuid4().hex
        if sent > self._epoch_seen_at:
            self._epoch_seen_at = sent
        if sent > self._last_ok_sent:
            self._last_ok_sent = sent
        self._offset = server_now - (sent + received) / 2
        # The server - local offset is in [server_now - received, server_now - sent]. Keep the
        # tightest such interval (widened as it ages, for the clocks' drift), unless a new one
        # contradicts it (the server's clock was set): lateness is judged from its middle.
        low, high = server_now - received, server_now - sent
        best_low, best_high, best_at = self._bounds
        slack = (received - best_at) * _DRIFT
        best_low -= slack
        best_high += slack
        if high - low <= best_high - best_low or high < best_low or low > best_high:
            self._bounds = (low, high, received)

    def _server_offset(self) -> float:
        """Server time - local clock, as well as this process knows it (see ``_saw``)."""
        low, high, _ = self._bounds
        return (low + high) / 2

    def _decide(
        self, key: str, n: float, timeout: float | None, wait_ok: bool
    ) -> _Flow[RedisDecision]:
        """One decision: lease, fallback or script; for ``acquire`` also the wait."""
        now = self._now
        started = now()
        deadline = math.inf if timeout is None else started + max(0.0, float(timeout))
        slept = 0.0
        while True:
            if self.lease is not None and self._leases.get(key):
                taken = self._take_lease(key, n, wait_ok)
                if taken is not None:
                    return taken
            if self._down:
                route = self._route()
                if route == _LOCAL:
                    decision, naps = yield from self._fallback_decide(key, n, deadline, wait_ok)
                    slept += naps
                    if decision is None:
                        continue
                    if decision.allowed and wait_ok:
                        with self._lock:
                            self._counters.waited(slept)
                    return decision._replace(waited=slept)
                if route == _PROBE and self.on_unavailable == "local_fallback":
                    try:
                        yield from self._resume(key)
                    except self._redis_errors as error:
                        self._handle(error)
                        continue
            lease = 0.0
            if self.lease is not None and key not in self._lease_inflight:
                lease = self.lease
                self._lease_inflight.add(key)
            returns = self._returns.pop(key, None) if self._returns else None
            member_id = f"{self._client_id}{next(self._ids)}"
            max_wait = (deadline - now() if deadline < math.inf else math.inf) if wait_ok else 0.0
            args = [
                *self._prelude(),
                repr(n),
                _NO_LIMIT if max_wait == math.inf else repr(max(0.0, max_wait)),
                member_id,
                repr(lease),
                0 if not returns else len(returns),
            ]
            if returns:
                for member, kept in returns:
                    args += [member, repr(kept)]
            sent = now()
            try:
                reply = _Reply.decode((yield _Eval(_DECIDE, self._keys(key), args)))
            except self._redis_errors as error:
                self._handle(error)
                continue
            finally:
                if lease:
                    self._lease_inflight.discard(key)
            received = now()
            server_now, epoch, remaining = reply.server_now, reply.epoch, reply.remaining
            self._saw(epoch, sent, server_now, received)
            if self._down:
                self._recovered()
            reset_at = received + reply.reset_in
            if not reply.allowed:
                retry_after = reply.retry_after
                with self._lock:
                    self._counters.rejected += 1
                if wait_ok:
                    raise self._timeout_error(key, n, retry_after, timeout)
                return RedisDecision(
                    False, remaining, retry_after, reset_at, math.nan, slept, "redis"
                )
            at, member, granted = reply.at, reply.member, reply.granted
            if granted > 0.0 and granted - n > _EPS:
                with self._lock:
                    self._leases.setdefault(key, []).append(
                        _Lease(
                            member,
                            granted,
                            granted - n,
                            sent + self.lease_duration,
                            server_now - received,
                            reset_at,
                        )
                    )
            wait = at - server_now
            if wait > 0.0 and self.algorithm == "sliding_window":
                woken = yield from self._wait_turn(
                    key, n, timeout, deadline, (member, epoch, at, wait, remaining, reset_at)
                )
                if woken is None:
                    continue  # Redis failed when it woke: decide again (fallback or raise)
                naps, at, remaining, reset_at = woken
                slept += naps
            elif wait > 0.0:
                try:
                    yield _Sleep(wait)
                except GeneratorExit:
                    raise
                except BaseException:
                    yield from self._refund(key, member, n)
                    raise
                slept += wait
                valid = yield from self._still_valid(epoch)
                if not valid:
                    continue  # the reservation was lost with the server's state: queue again
            with self._lock:
                counters = self._counters
                counters.admitted += 1
                counters.admitted_units += n
                if wait_ok:
                    counters.waited(slept)
            return RedisDecision(True, remaining, 0.0, reset_at, at, slept, "redis")

    def _wait_turn(
        self,
        key: str,
        n: float,
        timeout: float | None,
        deadline: float,
        reservation: tuple[bytes, bytes, float, float, float, float],
    ) -> _Flow[tuple[float, float, float, float] | None]:
        """Sleep until a sliding-window reservation is due, and make its units count from when
        they are really used (confirm on wake, see the module docstring).

        A firm reservation woken within the tolerance of its due time (by ``_server_offset``),
        whose epoch this process saw within the grace, goes at its due time with no round trip,
        as before. Otherwise one round trip (``_SW_WAKE``, which also does the epoch check) lets
        it stand (on time after all), moves it to the server's ``now`` if every window holding
        ``now`` has room, or else to the earliest time that has (then it sleeps again).
        ``reservation``: (member, epoch, due server time, wait, remaining, reset_at) from the
        decision. Returns ``(seconds slept, server time, remaining, reset_at)``, or None when
        Redis failed (the caller decides again). Raises a timeout error when queuing again would
        pass ``timeout``.
        """
        now = self._now
        member, epoch, due, wait, remaining, reset_at = reservation
        slept = 0.0
        while True:
            if wait > 0.0:
                try:
                    yield _Sleep(wait)
                except GeneratorExit:
                    raise
                except BaseException:
                    yield from self._refund(key, member, n)
                    raise
                slept += wait
            woke = now()
            late = woke + self._server_offset() - due
            if (
                member[:1] != b"&"
                and epoch == self._epoch
                and self._epoch_seen_at >= woke - self._grace
                and late <= self._tolerance
            ):
                self._wakes[0] += 1  # (under threads: about, like round_trips)
                return slept, due, remaining, reset_at
            max_wait = deadline - woke if deadline < math.inf else math.inf
            args = [
                *self._prelude(),
                repr(n),
                _NO_LIMIT if max_wait == math.inf else repr(max(0.0, max_wait)),
                member,
                repr(due),
                epoch,
            ]
            sent = now()
            try:
                reply = _Reply.decode((yield _Eval(_WAKE, self._keys(key), args)))
            except self._redis_errors as error:
                self._handle(error)
                return None
            except GeneratorExit:
                raise
            except BaseException:  # cancelled in flight: give back whichever slot it now holds
                yield from self._refund(key, member, n)
                raise
            received = now()
            server_now, epoch, remaining = reply.server_now, reply.epoch, reply.remaining
            self._saw(epoch, sent, server_now, received)
            reset_at = received + reply.reset_in
            if not reply.allowed:
                with self._lock:
                    self._counters.rejected += 1
                self._wakes[4] += 1
                raise self._timeout_error(key, n, reply.retry_after, timeout)
            at, member = reply.at, reply.member
            self._wakes[1 if at == due else 2 if at == server_now else 3] += 1
            if at <= server_now:
                return slept, at, remaining, reset_at
            due, wait = at, at - server_now

    def _take_lease(self, key: str, n: float, wait_ok: bool) -> RedisDecision | None:
        now = self._now()
        with self._lock:
            leases = self._leases.get(key)
            if not leases:
                return None
            hit = None
            for lease in list(leases):
                if now >= lease.until:
                    leases.remove(lease)
                    if lease.left > _EPS:
                        self._returns.setdefault(key, []).append(
                            (lease.member, lease.units - lease.left)
                        )
                elif hit is None and lease.left >= n - _EPS:
                    lease.left -= n
                    hit = lease
            if not leases:
                del self._leases[key]
            if hit is None:
                return None
            counters = self._counters
            counters.admitted += 1
            counters.admitted_units += n
            if wait_ok:
                counters.waits[0] += 1
        return RedisDecision(
            True, max(0.0, hit.left), 0.0, hit.reset_at, now + hit.offset, 0.0, "lease"
        )

    def _still_valid(self, epoch: bytes) -> _Flow[bool]:
        """After waiting for a reservation: is it still in the server's state?"""
        if self._epoch != epoch:
            return False
        sent = self._now()
        if self._epoch_seen_at >= sent - self._grace:
            return True
        try:
            reply = yield _Eval(_CONFIRM_SCRIPT, [self._meta], self._prelude())
        except self._redis_errors as error:
            self._handle(error)
            return False
        self._saw(reply[1], sent, float(reply[0]), self._now())
        return bool(reply[1] == epoch)

    def _adjust(
        self, key: str, actual_count: float, estimated_count: float, admitted_at: float | None
    ) -> _Flow[float]:
        where = f"{self.name}.adjust"
        delta = _check_actual(actual_count, where) - _check_count(estimated_count, where)
        if admitted_at is not None:
            admitted_at = _check_number(
                admitted_at,
                f"{where} admitted_at",
                "server seconds (RedisDecision.server_time)",
                allow_zero=True,
            )
        if delta == 0.0:
            return delta
        if delta < 0.0 and self.algorithm != "sliding_window":
            with self._lock:
                self._counters.forfeited += -delta
            return delta
        upto = repr(admitted_at) if delta < 0.0 and admitted_at is not None else ""
        args = [*self._prelude(), repr(delta), upto, f"{self._client_id}{next(self._ids)}"]
        try:
            reply = yield _Eval(_ADJUST, self._keys(key), args)
        except self._redis_errors:  # unreachable: a refund is forfeited, a charge lost
            done = 0.0
        else:
            done = float(reply)
        with self._lock:
            if delta < 0.0:
                self._counters.refunded += done
                self._counters.forfeited += -delta - done
            else:
                self._counters.admitted_units += done
        return delta

    def _refund(self, key: str, member: bytes, n: float) -> _Flow[None]:
        """Give a cancelled reservation back (best effort: Redis may be gone)."""
        keys = self._keys(key)[1:]
        args: list[Any] = [member]
        if self.algorithm == "sliding_window":  # under any of its names: a wake renames it
            base = member.lstrip(b"+&")
            args = [base, "0", b"+" + base, "0", b"&" + base, "0"]
        try:
            reply = yield _Eval(_REFUND, keys, args)
        except Exception:  # unreachable Redis: the entry ages out on its own
            return
        with self._lock:
            if self.algorithm == "sliding_window":
                self._counters.refunded += float(reply)
            elif reply == b"1":
                self._counters.refunded += n
            else:  # later grants were computed with these units gone
                self._counters.forfeited += n

    def _give_back_leases(self) -> _Flow[None]:
        """Return every lease's unused units now (at close)."""
        if self.lease is None:
            return
        with self._lock:
            for key, leases in self._leases.items():
                for lease in leases:
                    if lease.left > _EPS:
                        self._returns.setdefault(key, []).append(
                            (lease.member, lease.units - lease.left)
                        )
            self._leases.clear()
            returns, self._returns = self._returns, {}
        for key, pairs in returns.items():
            args: list[Any] = []
            for member, kept in pairs:
                args += [member, repr(kept)]
            try:
                yield _Eval(_REFUND, self._keys(key)[1:], args)
            except Exception:  # best effort: the entries age out on their own
                return

    # --- outages ----------------------------------------------------------------------------
    def _unavailable(self, error: BaseException, retry_after: float) -> RateLimitError:
        detail = _scrub(f"{type(error).__name__}: {error}")
        return RateLimitError(
            f"{self.name}: the rate limiter's Redis at {self.url} is unavailable ({detail}); "
            "failing closed: nothing is admitted until it answers. Pass "
            "on_unavailable='local_fallback' to admit on a local share of the limit meanwhile",
            code="limiter_unavailable",
            retryable=True,
            retry_after=retry_after,
            details={"url": self.url, "limiter": self.name},
        )

    def _handle(self, error: BaseException) -> None:
        """A script call failed: raise what the caller should see, or (Redis unreachable) start
        or continue the outage and return (raises too when failing closed)."""
        if isinstance(error, self._config_errors):
            raise self._script_error(error, "check the credentials and ACL permissions") from None
        if isinstance(error, self._unavailable_errors):
            self._failed(error)
            return
        raise self._script_error(
            error, f"check that nothing else writes keys under {self._tag!r}"
        ) from None

    def _script_error(self, error: BaseException, hint: str) -> RateLimitError:
        detail = _scrub(f"{type(error).__name__}: {error}")
        return RateLimitError(
            f"{self.name}: the rate limit script failed on Redis at {self.url} ({detail}); {hint}",
            code="limiter_error",
            retryable=False,
            details={"url": self.url, "limiter": self.name},
        )

    def _timeout_error(
        self, key: str, n: float, wait: float, timeout: float | None
    ) -> RateLimitError:
        return RateLimitError(
            f"{self.name}: {n:g} units for key {key!r} would wait {wait:.3g} s, more than "
            f"timeout={0.0 if timeout is None else timeout:g} s",
            code="timeout",
            details={"key": key, "count": n, "wait": wait},
            retry_after=wait,
        )

    def _failed(self, error: BaseException) -> None:
        """A call could not reach Redis: start (or continue) the outage; raise if failing closed."""
        now = self._now()
        with self._lock:
            first = not self._down
            if first:
                self._down = True
                self._hold_until = now + self.fallback_hold
            self._next_probe = now + self.probe_interval
        if first:
            detail = _scrub(f"{type(error).__name__}: {error}")
            if self.on_unavailable == "fail_closed":
                then = "failing closed (nothing is admitted) until it answers"
            else:
                then = (
                    f"refusing for {self.fallback_hold:g} s, then admitting up to "
                    f"{self.fallback_rate:g} units per {self.period:g} s in this process until it "
                    "answers"
                )
            logger.warning(
                "%s: Redis at %s is unavailable (%s); %s", self.name, self.url, detail, then
            )
        if self.on_unavailable == "fail_closed":
            raise self._unavailable(error, self.probe_interval) from None

    def _route(self) -> int:
        """While Redis is down: _PROBE when this call should try it (claiming the probe), _LOCAL
        to decide locally (raises instead when failing closed); _GO once it is back."""
        now = self._now()
        with self._lock:
            if not self._down:
                return _GO
            if now >= self._next_probe:
                self._next_probe = now + self.probe_interval
                return _PROBE
            wait = self._next_probe - now
        if self.on_unavailable == "fail_closed":
            raise self._unavailable(ConnectionError("no answer since the last probe"), wait)
        return _LOCAL

    def _recovered(self) -> None:
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            logger.info("%s: Redis at %s answers again; deciding there", self.name, self.url)

    def _resume(self, key: str) -> _Flow[None]:
        """Probe and resume: replay this process's local admissions, mark the others' shares."""
        now = self._now()
        # The others' holds started no earlier than our last successful call: if they have not
        # ended by the time their probes reach Redis, nobody admitted locally.
        marker = now + self.probe_interval > self._last_ok_sent + self.fallback_hold
        first = True
        replayed = 0
        while True:
            with self._lock:
                batch = list(self._replays)
                self._replays.clear()
                if not batch and not first:
                    was_down, self._down = self._down, False
                    break
            now = self._now()
            horizon = self.period + self._grace
            by_key: dict[str, list[Any]] = {}
            for when, replay_key, units in batch:
                if now - when < horizon:
                    by_key.setdefault(replay_key, []).extend((repr(now - when), repr(units)))
            if first and not by_key:
                by_key[key] = []
            try:
                for replay_key, pairs in by_key.items():
                    args = [
                        *self._prelude(),
                        repr(self.probe_interval) if first and marker else "",
                        f"~rp{self._client_id}{next(self._ids)}",
                        *pairs,
                    ]
                    sent = self._now()
                    reply = yield _Eval(_RESUME, self._keys(replay_key), args)
                    self._saw(reply[1], sent, float(reply[0]), self._now())
                    first = False
                replayed += len(batch)
            except BaseException:
                with self._lock:
                    self._replays.extendleft(reversed(batch))
                raise
        if was_down:
            logger.info(
                "%s: Redis at %s answers again; replayed %d local admission(s), deciding there",
                self.name,
                self.url,
                replayed,
            )

    def _fallback_decide(
        self, key: str, n: float, deadline: float, wait_ok: bool
    ) -> _Flow[tuple[RedisDecision | None, float]]:
        """Decide on the local limiter, or wait for the hold / the next probe.

        Returns (decision, seconds slept); decision None: go round again (probe or retry).
        """
        now = self._now()
        hold = self._hold_until - now
        to_probe = max(0.0, self._next_probe - now)
        limiter = self._fallback
        if n > limiter.max_count + _EPS:  # more than the local share: only Redis can admit it
            hold = max(hold, to_probe, 1e-3)
        if hold > 0.0:
            if not wait_ok or now + hold > deadline + _EPS:
                with self._lock:
                    self._counters.rejected += 1
                if wait_ok:
                    raise self._timeout_error(key, n, hold, deadline - now)
                return RedisDecision(False, 0.0, hold, now + hold, math.nan, 0.0, "fallback"), 0.0
            nap = max(min(hold, to_probe), 1e-3)
            yield _Sleep(nap)
            return None, nap
        if not wait_ok:
            result = limiter.try_acquire(key, n)
            with self._lock:
                if result.allowed:
                    self._remember(now, key, n)
                    self._counters.admitted += 1
                    self._counters.admitted_units += n
                else:
                    self._counters.rejected += 1
            server_time = now + self._offset if result.allowed else math.nan
            decision = RedisDecision(
                result.allowed,
                result.remaining,
                result.retry_after,
                result.reset_at,
                server_time,
                0.0,
                "fallback",
            )
            return decision, 0.0
        # No local admission past the next probe: Redis may be back by then.
        try:
            reservation = limiter.reserve(key, n, max(0.0, min(deadline, self._next_probe) - now))
        except RateLimitError as error:
            wait = error.retry_after or 0.0
            if now + wait <= deadline + _EPS:  # it would fit the timeout: probe first
                nap = max(to_probe, 1e-3)
                yield _Sleep(nap)
                return None, nap
            with self._lock:
                self._counters.rejected += 1
            raise self._timeout_error(key, n, wait, deadline - now) from None
        entry = (reservation.execute_at, key, n)
        with self._lock:
            self._remember(*entry)
        wait = max(0.0, reservation.execute_at - now)
        if wait > 0.0:
            try:
                yield _Sleep(wait)
            except GeneratorExit:
                raise
            except BaseException:
                reservation.cancel()
                with self._lock:
                    if entry in self._replays:
                        self._replays.remove(entry)
                raise
        reservation.use()
        with self._lock:
            self._counters.admitted += 1
            self._counters.admitted_units += n
        decision = RedisDecision(
            True,
            limiter.remaining(key),
            0.0,
            reservation.execute_at + self.period,
            reservation.execute_at + self._offset,
            wait,
            "fallback",
        )
        return decision, wait

    def _remember(self, when: float, key: str, n: float) -> None:
        """Keep a local admission for the replay (lock held); forget those too old to matter."""
        replays = self._replays
        replays.append((when, key, n))
        horizon = when - self.period - self._grace
        while replays and replays[0][0] < horizon:
            replays.popleft()


# Drivers of a flow (a generator yielding requests): perform each request and send back its
# answer, or throw its error in (the flow decides: refund, fallback, retry, re-raise).


def _evalsha(sha: str, op: _Eval) -> bytes:
    """``EVALSHA sha len(keys) *keys *args`` in the Redis protocol (arguments str, bytes or int)."""
    return _pack(
        b"EVALSHA",
        sha.encode(),
        str(len(op.keys)).encode(),
        *[key.encode() for key in op.keys],
        *[arg if isinstance(arg, bytes) else str(arg).encode() for arg in op.args],
    )


def _pack(*parts: bytes) -> bytes:
    """A command in the Redis protocol. Written out here rather than by redis-py's packer,
    which costs ~9 us for a decision's 14 arguments (per-argument type dispatch), this ~3 us."""
    return b"*%d\r\n" % len(parts) + b"".join([b"$%d\r\n%s\r\n" % (len(p), p) for p in parts])


def _no_script(error: BaseException) -> bool:
    import redis.exceptions

    return isinstance(error, redis.exceptions.NoScriptError)
