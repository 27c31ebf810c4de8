-- Lease up to `count` lines of an in_progress batch: those whose lease lapsed (their lane
-- died) first, then those given back, then lines never taken ([next, total) of the
-- record). Each lease is a member "<index>:<token>" of the running ZSET, scored by its
-- expiry; the token tells this lease from an older one of the same line.
-- KEYS: 1 the batch (HASH), 2 running (ZSET), 3 given back (LIST)
-- ARGV: 1 count, 2 lease (ms), 3 token
-- Returns {members, lines held by leases that have not lapsed, lines not taken yet}
local batch, running, requeued = KEYS[1], KEYS[2], KEYS[3]
local cur = redis.call('HMGET', batch, 'status', 'total', 'next')
local total, nxt = tonumber(cur[2] or '0'), tonumber(cur[3] or '0')
local count, token, until_ms = tonumber(ARGV[1]), ARGV[3], now + tonumber(ARGV[2])
local taken = {}
if cur[1] == 'in_progress' and count > 0 then
  local lapsed = redis.call('ZRANGEBYSCORE', running, '-inf', now, 'LIMIT', 0, count)
  for _, member in ipairs(lapsed) do
    redis.call('ZREM', running, member)
    table.insert(taken, string.match(member, '^(%d+)'))
  end
  while #taken < count do
    local index = redis.call('LPOP', requeued)
    if not index then break end
    table.insert(taken, index)
  end
  local fresh = math.min(count - #taken, total - nxt)
  for i = nxt, nxt + fresh - 1 do table.insert(taken, string.format('%d', i)) end
  if fresh > 0 then
    nxt = nxt + fresh
    redis.call('HSET', batch, 'next', string.format('%d', nxt))
  end
  local adds = {}
  for i, index in ipairs(taken) do
    taken[i] = index .. ':' .. token
    table.insert(adds, until_ms); table.insert(adds, taken[i])
  end
  if #adds > 0 then redis.call('ZADD', running, unpack(adds)) end
end
return {taken, redis.call('ZCOUNT', running, string.format('(%.3f', now), '+inf'),
        total - nxt + redis.call('LLEN', requeued)}
