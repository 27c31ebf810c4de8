-- The end of a leased batch line: its result written once, with its settlement, or the
-- line given back to be run again. Loaded as common.lua, this, then either settle.lua
-- (with a settlement: its KEYS and ARGV come first, so settle.lua reads them where it
-- always does) or `return 1`. This part's own KEYS and ARGV are the last ones.
-- KEYS (last 6): the batch (HASH), results (HASH), running (ZSET), given back (LIST),
--   the team's budget (HASH) and reservations (ZSET)
-- ARGV (last 10): 1 mode (done | back), 2 lease member, 3 custom_id, 4 result line,
--   5 failed (0 | 1), 6 reservation ('': nothing to give back), 7 its part (nanos; -1:
--   all), 8 prompt, 9 completion, 10 cached tokens (the batch's usage)
-- Returns 1 when it wrote the line's first result (and settled it), else 0.
local nk, na = #KEYS, #ARGV
local batch, results, running = KEYS[nk - 5], KEYS[nk - 4], KEYS[nk - 3]
local requeued, budget, resv = KEYS[nk - 2], KEYS[nk - 1], KEYS[nk]
local function mine(i) return ARGV[na - 10 + i] end
local member, custom_id, reservation = mine(2), mine(3), mine(6)

-- The attempt's part of its budget reservation, as settle.lua gives it back.
local function give_back()
  if reservation ~= '' then
    local part = tonumber(mine(7))
    if part < 0 then part = nil end
    release(budget, resv, reservation, part)
  end
end

redis.call('ZREM', running, member)
local status = redis.call('HGET', batch, 'status')
if mine(1) == 'back' then
  give_back()
  if status == 'in_progress' and redis.call('HEXISTS', results, custom_id) == 0 then
    redis.call('RPUSH', requeued, string.match(member, '^(%d+)'))
  end
  return 0
end
local line = string.match(member, '^(%d+)') .. ' ' .. mine(5) .. ' ' .. mine(4)
if (status ~= 'in_progress' and status ~= 'cancelling')
    or redis.call('HSETNX', results, custom_id, line) == 0 then
  give_back()  -- a late or second result: the first one counts, and was metered
  return 0
end
redis.call('HINCRBY', batch, mine(5) == '1' and 'failed' or 'completed', 1)
for i, name in ipairs({'prompt_tokens', 'completion_tokens', 'cached_tokens'}) do
  if mine(7 + i) ~= '0' then redis.call('HINCRBY', batch, name, mine(7 + i)) end
end
