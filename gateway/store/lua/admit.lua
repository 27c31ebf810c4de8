-- Admission: revocation check, four GCRA limiters and two budgets, all or nothing.
-- KEYS: 1 team's key records (HASH), 2 limiters (HASH: limiter → TAT), 3 budget (HASH),
--       4 reservations (ZSET)
-- ARGV: 1 key id, 2 request id, 3 check key (0/1), 4..7 limits (key rpm, key tpm,
--       team rpm, team tpm; 0 = none), 8 tokens, 9 team budget (nanos, -1 = none),
--       10 team period, 11 key budget, 12 key period, 13 cost (nanos), 14 reservation ttl ms
-- Returns {'ok', rpm limit, remaining, reset ms, tpm limit, remaining, reset ms}
--      or {refusal, limiter index or 0, retry ms (-1: never fits), limit, remaining, reset ms}
local key_id, rid = ARGV[1], ARGV[2]
if ARGV[3] == '1' and redis.call('HEXISTS', KEYS[1], key_id) == 0 then
  return {'revoked', 0, 0, 0, 0, 0}
end
local limiters, budget, resv = KEYS[2], KEYS[3], KEYS[4]
local kprefix = 'k:' .. key_id .. ':'

local tokens = tonumber(ARGV[8])
local qty = {1, tokens, 1, tokens}
local names = {'key_rpm', 'key_tpm', 'team_rpm', 'team_tpm'}
local fields = {kprefix .. 'rpm', kprefix .. 'tpm', 'team:rpm', 'team:tpm'}
local verdicts, tat_writes = {}, {}
local tats
for i = 1, 4 do
  local limit = tonumber(ARGV[3 + i])
  if limit > 0 then
    tats = tats or redis.call('HMGET', limiters, unpack(fields))
    local interval = WINDOW / limit
    local base = math.max(tonumber(tats[i] or '0'), now)
    local tat = base + qty[i] * interval
    local allow_at = tat - WINDOW
    if allow_at > now + 0.001 then
      local retry = -1
      if qty[i] <= limit then retry = math.ceil(allow_at - now) end
      local remaining = math.max(0, math.floor((now + WINDOW - base) / interval + 1e-9))
      return {names[i], i, retry, limit, remaining, math.ceil(base - now)}
    end
    local remaining = math.max(0, math.floor((now + WINDOW - tat) / interval + 1e-9))
    verdicts[i] = {limit, remaining, math.ceil(tat - now)}
    table.insert(tat_writes, fields[i]); table.insert(tat_writes, tat_str(tat))
  end
end

local expired = redis.call('ZRANGEBYSCORE', resv, '-inf', now, 'LIMIT', 0, 64)
for _, old in ipairs(expired) do release(budget, resv, old) end

local cost = tonumber(ARGV[13])
local team_budget, key_budget = tonumber(ARGV[9]), tonumber(ARGV[11])
local budget_writes = {}
if team_budget >= 0 or key_budget >= 0 then
  local tp, ts, tr = balance_fields('')
  local kp, ks, kr = balance_fields(kprefix)
  local cur = redis.call('HMGET', budget, tp, ts, tr, kp, ks, kr)
  local reserved = {}
  for i, b in ipairs({{team_budget, ARGV[10], tp, ts, 'team_budget'},
                      {key_budget, ARGV[12], kp, ks, 'key_budget'}}) do
    local spent, held, new_period = balance(cur, 3 * i - 2, b[2])
    reserved[i] = held
    if b[1] >= 0 then
      if spent + held + cost > b[1] then return {b[5], 0, 0, 0, 0, 0} end
      if new_period then
        table.insert(budget_writes, b[3]); table.insert(budget_writes, new_period)
        table.insert(budget_writes, b[4]); table.insert(budget_writes, '0')
      end
    end
  end
  if cost > 0 then
    for _, v in ipairs({tr, string.format('%d', reserved[1] + cost),
                        kr, string.format('%d', reserved[2] + cost),
                        'r:' .. rid, cost .. ' ' .. key_id}) do
      table.insert(budget_writes, v)
    end
    redis.call('ZADD', resv, now + tonumber(ARGV[14]), rid)
  end
end

if #tat_writes > 0 then redis.call('HSET', limiters, unpack(tat_writes)) end
if #budget_writes > 0 then redis.call('HSET', budget, unpack(budget_writes)) end

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
