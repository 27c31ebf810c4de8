-- Cache lookup, and the coalescing lock when it misses: one round trip either way.
-- KEYS: 1 entry, 2 lock. ARGV: 1 lock token, 2 lock ttl ms (0: do not lock)
-- Returns the entry; else 1 when this call took the lock, 0 when another holder has it
-- (or no lock was asked for).
local entry = redis.call('GET', KEYS[1])
if entry then return entry end
if ARGV[2] == '0' then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
