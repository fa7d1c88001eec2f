-- Give units back (no prelude): KEYS[1] log, KEYS[2] st; ARGV: (member, units kept) pairs.
-- Returns the units given back.
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
