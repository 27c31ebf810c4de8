-- A new batch: its record and its place in the team's list, at once. Time: common.lua.
-- KEYS: 1 the batch (HASH), 2 the team's batches (ZSET id → created ms)
-- ARGV: 1 batch id, 2 created (ms), then field, value, ... of the record
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
