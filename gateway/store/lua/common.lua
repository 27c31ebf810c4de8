-- Shared by admit.lua and settle.lua (prepended when the scripts are loaded).
-- Time comes from the Redis server (TIME), never from the gateways' clocks.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000  -- ms
local sec = tonumber(t[1])
local WINDOW = 60000  -- limits are per minute

-- days since 1970-01-01 -> 'YYYY-MM-DD' (H. Hinnant's civil_from_days)
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02d', y, m, d)
end

local today = civil(math.floor(sec / 86400))

local function period_id(period)
  if period == 'daily' then return today end
  return string.sub(today, 1, 7)
end

-- Few calls per script: each redis.call costs more than the command itself, so state is
-- read with one HMGET per hash and written with one HSET.

-- A GCRA TAT (a field of the team's limiters HASH) with full double precision; one in
-- the past means the same as none.
local function tat_str(tat) return string.format('%.17g', tat) end

-- The budget HASH fields of a balance: the team's (prefix '') or a key's ('k:<id>:').
local function balance_fields(prefix)
  return prefix .. 'period', prefix .. 'spent', prefix .. 'reserved'
end

-- (spent this period, reserved, period id when a new period starts, else nil) from the
-- HMGET values of balance_fields at cur[i], cur[i + 1], cur[i + 2]. A new period starts
-- spent at 0; reservations carry over.
local function balance(cur, i, period)
  local pid = period_id(period)
  local reserved = tonumber(cur[i + 2] or '0')
  if cur[i] ~= pid then return 0, reserved, pid end
  return tonumber(cur[i + 1] or '0'), reserved, nil
end

-- The team's and the key's balances, and one more budget field (`extra`), in one HMGET:
-- per balance {cap (-1: none), spent, held (reserved), new period id or nil, its fields,
-- the refusal naming it}, and the value of `extra`.
local function read_budgets(budget, kprefix, team_cap, team_period, key_cap, key_period,
                            extra)
  local tp, ts, tr = balance_fields('')
  local kp, ks, kr = balance_fields(kprefix)
  local cur = redis.call('HMGET', budget, tp, ts, tr, kp, ks, kr, extra)
  local out = {}
  for i, b in ipairs({{team_cap, team_period, tp, ts, tr, 'team_budget'},
                      {key_cap, key_period, kp, ks, kr, 'key_budget'}}) do
    local spent, held, new_period = balance(cur, 3 * i - 2, b[2])
    out[i] = {cap = b[1], spent = spent, held = held, new_period = new_period,
              pfield = b[3], sfield = b[4], rfield = b[5], refusal = b[6]}
  end
  return out, cur[7]
end

-- Reserve `amount` more on both balances (starting the new period of a capped one) and
-- under reservation `id`, which already held `held_by_id` and now expires `ttl` ms from
-- now: one HSET and one ZADD.
local function reserve(budget, resv, balances, key_id, id, amount, held_by_id, ttl)
  local writes = {}
  for _, b in ipairs(balances) do
    if b.cap >= 0 and b.new_period then
      table.insert(writes, b.pfield); table.insert(writes, b.new_period)
      table.insert(writes, b.sfield); table.insert(writes, '0')
    end
    if amount > 0 then
      table.insert(writes, b.rfield); table.insert(writes, string.format('%d', b.held + amount))
    end
  end
  if amount > 0 then
    table.insert(writes, 'r:' .. id)
    table.insert(writes, string.format('%d', held_by_id + amount) .. ' ' .. key_id)
    redis.call('ZADD', resv, now + ttl, id)
  end
  if #writes > 0 then redis.call('HSET', budget, unpack(writes)) end
end

-- Give back `amount` (nil: all) of a reservation: a request's or a lease's, settled,
-- returned, or expired because the process holding it died.
local function release(budget, resv, id, amount)
  local r = redis.call('HGET', budget, 'r:' .. id)
  if not r then
    redis.call('ZREM', resv, id)
    return
  end
  local held, key_id = string.match(r, '^(%d+) (.*)$')
  held = tonumber(held)
  if amount == nil or amount > held then amount = held end
  redis.call('HINCRBY', budget, 'reserved', -amount)
  redis.call('HINCRBY', budget, 'k:' .. key_id .. ':reserved', -amount)
  if amount < held then
    redis.call('HSET', budget, 'r:' .. id, string.format('%d', held - amount) .. ' ' .. key_id)
  else
    redis.call('HDEL', budget, 'r:' .. id)
    redis.call('ZREM', resv, id)
  end
end

-- Release the reservations whose requests (or leases) can no longer settle them.
local function purge_expired(budget, resv)
  local expired = redis.call('ZRANGEBYSCORE', resv, '-inf', now, 'LIMIT', 0, 64)
  for _, old in ipairs(expired) do release(budget, resv, old) end
end

-- Per kind (rpm, tpm), the tighter of the key's and the team's limiter: {limit,
-- remaining, reset ms} each, from `states[i]` (nil: no such limiter) in LIMITERS order.
local function tighter(states)
  local out = {}
  for _, pair in ipairs({{1, 3}, {2, 4}}) do
    local a, b = states[pair[1]], states[pair[2]]
    local v = a
    if b and (not a or b[2] < a[2]) then v = b end
    v = v or {0, 0, 0}
    table.insert(out, v[1]); table.insert(out, v[2]); table.insert(out, v[3])
  end
  return out
end

-- The limiters' HASH fields of a key's request, in LIMITERS order.
local function limiter_fields(key_id)
  local kprefix = 'k:' .. key_id .. ':'
  return {kprefix .. 'rpm', kprefix .. 'tpm', 'team:rpm', 'team:tpm'}
end
