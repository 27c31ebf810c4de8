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

-- A GCRA TAT is written with full double precision and lives until it is in the past.
local function put_tat(key, tat)
  if tat > now then
    redis.call('SET', key, string.format('%.17g', tat), 'PX', math.ceil(tat - now) + 1)
  else
    redis.call('DEL', key)
  end
end

local function get_tat(key)
  return tonumber(redis.call('GET', key) or '0')
end

-- (spent this period, reserved) for the team (prefix '') or a key ('k:<id>:');
-- a new period starts spent at 0, reservations carry over.
local function balance(budget, prefix, period)
  local pid = period_id(period)
  local cur = redis.call('HMGET', budget, prefix .. 'period', prefix .. 'spent',
                         prefix .. 'reserved')
  if cur[1] ~= pid then
    redis.call('HSET', budget, prefix .. 'period', pid, prefix .. 'spent', 0)
    return 0, tonumber(cur[3] or '0')
  end
  return tonumber(cur[2] or '0'), tonumber(cur[3] or '0')
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
