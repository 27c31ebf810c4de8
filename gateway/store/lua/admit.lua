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

local tokens = tonumber(ARGV[8])
local qty = {1, tokens, 1, tokens}
local names = {'key_rpm', 'key_tpm', 'team_rpm', 'team_tpm'}
local fields = limiter_fields(key_id)
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

purge_expired(budget, resv)
local cost = tonumber(ARGV[13])
local team_cap, key_cap = tonumber(ARGV[9]), tonumber(ARGV[11])
local balances
if team_cap >= 0 or key_cap >= 0 then
  balances = read_budgets(budget, 'k:' .. key_id .. ':', team_cap, ARGV[10], key_cap,
                          ARGV[12], 'r:' .. rid)
  for _, b in ipairs(balances) do
    if b.cap >= 0 and b.spent + b.held + cost > b.cap then
      return {b.refusal, 0, 0, 0, 0, 0}
    end
  end
end

if #tat_writes > 0 then redis.call('HSET', limiters, unpack(tat_writes)) end
if balances then reserve(budget, resv, balances, key_id, rid, cost, 0, tonumber(ARGV[14])) end

-- Headers report, per kind, the tighter of the key's and the team's limiter.
local out = tighter(verdicts)
table.insert(out, 1, 'ok')
return out
