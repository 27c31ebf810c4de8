-- Admission: revocation check, four GCRA limiters and two budgets, all or nothing.
-- KEYS: 1 team's key records (HASH), 2 key rpm, 3 key tpm, 4 team rpm, 5 team tpm,
--       6 budget (HASH), 7 reservations (ZSET)
-- ARGV: 1 key id, 2 request id, 3 check key (0/1), 4..7 limits (key rpm, key tpm,
--       team rpm, team tpm; 0 = none), 8 tokens, 9 team budget (nanos, -1 = none),
--       10 team period, 11 key budget, 12 key period, 13 cost (nanos), 14 reservation ttl ms
-- Returns {'ok', rpm limit, remaining, reset ms, tpm limit, remaining, reset ms}
--      or {refusal, limiter index or 0, retry ms (-1: never fits), limit, remaining, reset ms}
local key_id, rid = ARGV[1], ARGV[2]
if ARGV[3] == '1' and redis.call('HEXISTS', KEYS[1], key_id) == 0 then
  return {'revoked', 0, 0, 0, 0, 0}
end

local tokens = tonumber(ARGV[8])
local qty = {1, tokens, 1, tokens}
local names = {'key_rpm', 'key_tpm', 'team_rpm', 'team_tpm'}
local verdicts = {}
for i = 1, 4 do
  local limit = tonumber(ARGV[3 + i])
  if limit > 0 then
    local interval = WINDOW / limit
    local base = math.max(get_tat(KEYS[1 + i]), now)
    local tat = base + qty[i] * interval
    local allow_at = tat - WINDOW
    if allow_at > now + 0.001 then
      local retry = -1
      if qty[i] <= limit then retry = math.ceil(allow_at - now) end
      local remaining = math.max(0, math.floor((now + WINDOW - base) / interval + 1e-9))
      return {names[i], i, retry, limit, remaining, math.ceil(base - now)}
    end
    local remaining = math.max(0, math.floor((now + WINDOW - tat) / interval + 1e-9))
    verdicts[i] = {limit, remaining, math.ceil(tat - now), tat}
  end
end

local budget, resv = KEYS[6], KEYS[7]
local expired = redis.call('ZRANGEBYSCORE', resv, '-inf', now, 'LIMIT', 0, 64)
for _, old in ipairs(expired) do release(budget, resv, old) end

local cost = tonumber(ARGV[13])
local team_budget, key_budget = tonumber(ARGV[9]), tonumber(ARGV[11])
local kprefix = 'k:' .. key_id .. ':'
if team_budget >= 0 then
  local spent, reserved = balance(budget, '', ARGV[10])
  if spent + reserved + cost > team_budget then return {'team_budget', 0, 0, 0, 0, 0} end
end
if key_budget >= 0 then
  local spent, reserved = balance(budget, kprefix, ARGV[12])
  if spent + reserved + cost > key_budget then return {'key_budget', 0, 0, 0, 0, 0} end
end

for i = 1, 4 do
  if verdicts[i] then put_tat(KEYS[1 + i], verdicts[i][4]) end
end
if cost > 0 and (team_budget >= 0 or key_budget >= 0) then
  redis.call('HINCRBY', budget, 'reserved', cost)
  redis.call('HINCRBY', budget, kprefix .. 'reserved', cost)
  redis.call('HSET', budget, 'r:' .. rid, cost .. ' ' .. key_id)
  redis.call('ZADD', resv, now + tonumber(ARGV[14]), rid)
end

-- Headers report, per kind, the tighter of the key's and the team's limiter.
local out = {'ok'}
for _, pair in ipairs({{1, 3}, {2, 4}}) do
  local a, b = verdicts[pair[1]], verdicts[pair[2]]
  local v = a
  if b and (not a or b[2] < a[2]) then v = b end
  if v then
    table.insert(out, v[1]); table.insert(out, v[2]); table.insert(out, v[3])
  else
    table.insert(out, 0); table.insert(out, 0); table.insert(out, 0)
  end
end
return out
