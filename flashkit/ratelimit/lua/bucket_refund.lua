-- Refund the latest grant only (no prelude): KEYS[1] st; ARGV[1] its id. Restores the state
-- before it. Returns '1' when it was refunded, '0' when a later grant was computed with it.
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
