-- Settlement: true up the TPM limiters, release the reservation, add the real cost,
-- update the day's rollup and append the usage event, atomically, and once: a settlement
-- id already applied (the same settlement sent again after its reply was lost) returns 0
-- and changes nothing.
-- KEYS: 1 limiters (HASH), 2 budget (HASH), 3 reservations (ZSET), 4 rollup (HASH),
--       5 events (STREAM), 6 settled (ZSET: settlement id → when, ms)
-- ARGV: 1 key id, 2 reservation (the request's own, or its lease's), 3 token delta,
--       4 key tpm limit, 5 team tpm limit, 6 cost (nanos), 7 team period, 8 key period,
--       9 model, 10 prompt tokens, 11 completion tokens, 12 cached tokens, 13 cache hit,
--       14 error, 15 estimated, 16 event JSON, 17 stream max length, 18 saved tokens,
--       19 saved cost (nanos): what a response-cache hit did not spend, 20 the request's
--       part of the reservation (nanos; -1: all of it), 21 settlement id, 22 how long
--       settled ids are remembered (ms), 23 cache write tokens, 24 reasoning tokens (parts
--       of 10 and 11)
local settled, sid = KEYS[6], ARGV[21]
if redis.call('ZSCORE', settled, sid) then return 0 end
redis.call('ZREMRANGEBYSCORE', settled, '-inf', now - tonumber(ARGV[22]))
redis.call('ZADD', settled, now, sid)
local key_id, rid = ARGV[1], ARGV[2]
local kprefix = 'k:' .. key_id .. ':'
local delta = tonumber(ARGV[3])
if delta ~= 0 then
  local fields, limits = {}, {}
  for i, field in ipairs({kprefix .. 'tpm', 'team:tpm'}) do
    local limit = tonumber(ARGV[3 + i])
    if limit > 0 then table.insert(fields, field); table.insert(limits, limit) end
  end
  if #fields > 0 then
    local tats = redis.call('HMGET', KEYS[1], unpack(fields))
    local writes = {}
    for i, field in ipairs(fields) do
      local tat = math.max(tonumber(tats[i] or '0'), now) + delta * WINDOW / limits[i]
      table.insert(writes, field); table.insert(writes, tat_str(tat))
    end
    redis.call('HSET', KEYS[1], unpack(writes))
  end
end

local budget, rfield = KEYS[2], 'r:' .. rid
local tp, ts, tr = balance_fields('')
local kp, ks, kr = balance_fields(kprefix)
local cur = redis.call('HMGET', budget, tp, ts, tr, kp, ks, kr, rfield)
local team_spent, team_reserved, team_period = balance(cur, 1, ARGV[7])
local key_spent, key_reserved, key_period = balance(cur, 4, ARGV[8])
if cur[7] then  -- the request's part of the reservation, given back
  local held, owner = string.match(cur[7], '^(%d+) (.*)$')
  held = tonumber(held)
  local amount = tonumber(ARGV[20])
  if amount < 0 or amount > held then amount = held end
  team_reserved = team_reserved - amount
  if owner == key_id then
    key_reserved = key_reserved - amount
  else
    redis.call('HINCRBY', budget, 'k:' .. owner .. ':reserved', -amount)
  end
  if amount < held then
    redis.call('HSET', budget, rfield, string.format('%d', held - amount) .. ' ' .. owner)
  else
    redis.call('HDEL', budget, rfield)
    redis.call('ZREM', KEYS[3], rid)
  end
end
local cost = tonumber(ARGV[6])
local writes = {ts, string.format('%d', team_spent + cost), tr, string.format('%d', team_reserved),
                ks, string.format('%d', key_spent + cost), kr, string.format('%d', key_reserved)}
if team_period then table.insert(writes, tp); table.insert(writes, team_period) end
if key_period then table.insert(writes, kp); table.insert(writes, key_period) end
redis.call('HSET', budget, unpack(writes))

-- The rollup's metrics and their ARGV (nil: always 1); absent fields read as 0, so
-- zeros are not written.
local p = today .. '|' .. ARGV[9] .. '|'
local rollup = KEYS[4]
for _, m in ipairs({{'requests'}, {'prompt_tokens', 10}, {'completion_tokens', 11},
                    {'cached_tokens', 12}, {'cost_nanos', 6}, {'cache_hits', 13},
                    {'errors', 14}, {'estimated', 15}, {'saved_tokens', 18},
                    {'saved_cost_nanos', 19}, {'cache_write_tokens', 23},
                    {'reasoning_tokens', 24}}) do
  local n = m[2] and ARGV[m[2]] or '1'
  if n ~= '0' then redis.call('HINCRBY', rollup, p .. m[1], n) end
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[17], '*', 'e', ARGV[16])
return 1
