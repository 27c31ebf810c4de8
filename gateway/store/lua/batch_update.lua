-- A batch's status transition: set fields only if its status is an expected one and, when
-- claiming (a lane validating or finalizing it), no other lane's claim is current.
-- KEYS: 1 the batch (HASH)
-- ARGV: 1 expected statuses, comma-separated, 2 claim (ms; 0: none), then field, value, ...
local cur = redis.call('HMGET', KEYS[1], 'status', 'claim')
if not cur[1] then return 0 end
local expected = false
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == cur[1] then expected = true end
end
if not expected then return 0 end
local claim = tonumber(ARGV[2])
if claim > 0 then
  if cur[2] and tonumber(cur[2]) > now then return 0 end
  redis.call('HSET', KEYS[1], 'claim', string.format('%d', now + claim))
end
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
return 1
