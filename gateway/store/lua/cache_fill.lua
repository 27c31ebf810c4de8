-- Store a cache entry and release the coalescing lock if this token still holds it.
-- KEYS: 1 entry, 2 lock. ARGV: 1 entry, 2 ttl ms, 3 lock token ('' : held no lock)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
