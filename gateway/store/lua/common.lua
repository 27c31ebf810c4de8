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

-- Give back a reservation (settled, or expired because its request's process died).
local function release(budget, resv, rid)
  local r = redis.call('HGET', budget, 'r:' .. rid)
  redis.call('ZREM', resv, rid)
  if not r then return end
  local amount, key_id = string.match(r, '^(%d+) (.*)$')
  redis.call('HINCRBY', budget, 'reserved', -tonumber(amount))
  redis.call('HINCRBY', budget, 'k:' .. key_id .. ':reserved', -tonumber(amount))
  redis.call('HDEL', budget, 'r:' .. rid)
end
