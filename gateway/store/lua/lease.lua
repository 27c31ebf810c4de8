-- Lease: give back what a lease still holds, then take a fresh share of a key's limits
-- and budgets ahead of need, for the process holding it to admit requests from without a
-- round trip (gateway/leases.py). What a share takes counts as used at once, as
-- admission's reservations do. Each limiter and budget gives at most 1/share of what it
-- has left, and nothing at all is granted unless every one the key is under can give
-- `least`: near its limits a key is admitted request by request.
-- KEYS: 1 team's key records (HASH), 2 limiters (HASH), 3 budget (HASH),
--       4 reservations (ZSET)
-- ARGV: 1 key id, 2 lease id, 3..6 limits (key rpm, key tpm, team rpm, team tpm;
--       0 = none), 7..9 given back (requests, tokens, nanos), 10..12 wanted (the same;
--       all 0: give back only), 13..15 least, 16 team budget (nanos, -1 = none),
--       17 team period, 18 key budget, 19 key period, 20 reservation ttl ms, 21 share
-- Returns {'returned'}, {'revoked'}, {'none'} (nothing to spare), or {'ok', requests,
--         tokens, nanos granted (-1: no bound), then per kind (rpm, tpm) limit,
--         remaining, reset ms of the tighter limiter, after the grant}
local key_id, lease = ARGV[1], ARGV[2]
local limiters, budget, resv = KEYS[2], KEYS[3], KEYS[4]
local fields = limiter_fields(key_id)
local kind = {1, 2, 1, 2}  -- which of requests, tokens each limiter counts
local limits = {}
for i = 1, 4 do limits[i] = tonumber(ARGV[2 + i]) end

-- What the lease did not use goes back first: the limiters' TATs move back by it (one
-- left in the past reads as now, so capacity never builds up beyond a full window).
local back = {tonumber(ARGV[7]), tonumber(ARGV[8])}
local tats = redis.call('HMGET', limiters, unpack(fields))
local bases, refunds = {}, {}
for i = 1, 4 do
  if limits[i] > 0 then
    local tat = tonumber(tats[i] or '0')
    if back[kind[i]] > 0 then
      tat = tat - back[kind[i]] * WINDOW / limits[i]
      table.insert(refunds, fields[i]); table.insert(refunds, tat_str(tat))
    end
    bases[i] = math.max(tat, now)
  end
end
if #refunds > 0 then redis.call('HSET', limiters, unpack(refunds)) end
local back_nanos = tonumber(ARGV[9])
if back_nanos > 0 then release(budget, resv, lease, back_nanos) end

local grant = {tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])}
if grant[1] == 0 and grant[2] == 0 and grant[3] == 0 then return {'returned'} end
if redis.call('HEXISTS', KEYS[1], key_id) == 0 then return {'revoked'} end

local share = tonumber(ARGV[21])
local bounded = {false, false, false}
for i = 1, 4 do
  if limits[i] > 0 then
    local left = math.floor((now + WINDOW - bases[i]) / (WINDOW / limits[i]) + 1e-9)
    grant[kind[i]] = math.min(grant[kind[i]], math.floor(left / share))
    bounded[kind[i]] = true
  end
end
purge_expired(budget, resv)
local team_cap, key_cap = tonumber(ARGV[16]), tonumber(ARGV[18])
local balances, record
if team_cap >= 0 or key_cap >= 0 then
  balances, record = read_budgets(budget, 'k:' .. key_id .. ':', team_cap, ARGV[17],
                                  key_cap, ARGV[19], 'r:' .. lease)
  for _, b in ipairs(balances) do
    if b.cap >= 0 then
      grant[3] = math.min(grant[3], math.floor((b.cap - b.spent - b.held) / share))
      bounded[3] = true
    end
  end
end
for k = 1, 3 do
  if bounded[k] and grant[k] < tonumber(ARGV[12 + k]) then return {'none'} end
end

local states, tat_writes = {}, {}
for i = 1, 4 do
  if limits[i] > 0 then
    local interval = WINDOW / limits[i]
    local tat = bases[i] + grant[kind[i]] * interval
    states[i] = {limits[i], math.max(0, math.floor((now + WINDOW - tat) / interval + 1e-9)),
                 math.ceil(tat - now)}
    table.insert(tat_writes, fields[i]); table.insert(tat_writes, tat_str(tat))
  end
end
if #tat_writes > 0 then redis.call('HSET', limiters, unpack(tat_writes)) end
if balances then
  local held = record and tonumber(string.match(record, '^(%d+) ')) or 0
  reserve(budget, resv, balances, key_id, lease, bounded[3] and grant[3] or 0, held,
          tonumber(ARGV[20]))
end

local out = {'ok'}
for k = 1, 3 do table.insert(out, bounded[k] and grant[k] or -1) end
for _, v in ipairs(tighter(states)) do table.insert(out, v) end
return out
