-- What the bucket algorithms share (after the prelude, before gcra.lua or token_bucket.lua):
-- KEYS[2] st, the state hash, and its expiry. The state must outlive the time it would read as
-- absent (a full bucket): its expiry, kept in field 'exp', is pushed out (past twice what is
-- needed) only when it falls short, so a hot decision writes one hash and no PEXPIRE. Call
-- keep_until after writing the hash.
local st = KEYS[2]
local s = {}  -- the hash's fields as read by load()
local expires = 0
local function keep_until(until_)
  if until_ + 1 > expires then
    expires = until_ + (until_ - now) + 2
    redis.call('HSET', st, 'exp', expires)
    redis.call('PEXPIRE', st, math.ceil((expires - now) * 1000))
  end
end
