-- Release (ARGV[2] = '0') or extend (ARGV[2] = ttl ms) a coalescing lock, only while this
-- token holds it: a lock that expired and was taken over belongs to its new holder.
-- KEYS: 1 lock. ARGV: 1 lock token, 2 ttl ms or '0'
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
