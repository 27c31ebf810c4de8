-- Settlement: true up the TPM limiters, release the reservation, add the real cost,
-- update the day's rollup and append the usage event, atomically.
-- KEYS: 1 key tpm, 2 team tpm, 3 budget (HASH), 4 reservations (ZSET), 5 rollup (HASH),
--       6 events (STREAM)
-- ARGV: 1 key id, 2 request id, 3 token delta, 4 key tpm limit, 5 team tpm limit,
--       6 cost (nanos), 7 team period, 8 key period, 9 model, 10 prompt tokens,
--       11 completion tokens, 12 cached tokens, 13 cache hit, 14 error, 15 estimated,
--       16 event JSON, 17 stream max length, 18 saved tokens, 19 saved cost (nanos): what
--       a response-cache hit did not spend
local key_id, rid = ARGV[1], ARGV[2]
local delta = tonumber(ARGV[3])
if delta ~= 0 then
  for i = 1, 2 do
    local limit = tonumber(ARGV[3 + i])
    if limit > 0 then
      put_tat(KEYS[i], math.max(get_tat(KEYS[i]), now) + delta * WINDOW / limit)
    end
  end
end

local budget = KEYS[3]
release(budget, KEYS[4], rid)
local cost = tonumber(ARGV[6])
local kprefix = 'k:' .. key_id .. ':'
balance(budget, '', ARGV[7])
balance(budget, kprefix, ARGV[8])
redis.call('HINCRBY', budget, 'spent', cost)
redis.call('HINCRBY', budget, kprefix .. 'spent', cost)

local p = today .. '|' .. ARGV[9] .. '|'
local rollup = KEYS[5]
redis.call('HINCRBY', rollup, p .. 'requests', 1)
redis.call('HINCRBY', rollup, p .. 'prompt_tokens', ARGV[10])
redis.call('HINCRBY', rollup, p .. 'completion_tokens', ARGV[11])
redis.call('HINCRBY', rollup, p .. 'cached_tokens', ARGV[12])
redis.call('HINCRBY', rollup, p .. 'cost_nanos', cost)
redis.call('HINCRBY', rollup, p .. 'cache_hits', ARGV[13])
redis.call('HINCRBY', rollup, p .. 'errors', ARGV[14])
redis.call('HINCRBY', rollup, p .. 'estimated', ARGV[15])
redis.call('HINCRBY', rollup, p .. 'saved_tokens', ARGV[18])
redis.call('HINCRBY', rollup, p .. 'saved_cost_nanos', ARGV[19])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[17], '*', 'e', ARGV[16])
return 1
