-- Release: give back a request's own reservation whole (its admission may have run
-- although the request never learned it: it was then refused, or admitted locally).
-- Nothing held under it: nothing happens, so sending it again is harmless.
-- KEYS: 1 budget (HASH), 2 reservations (ZSET)
-- ARGV: 1 reservation id
release(KEYS[1], KEYS[2], ARGV[1])
return 1
