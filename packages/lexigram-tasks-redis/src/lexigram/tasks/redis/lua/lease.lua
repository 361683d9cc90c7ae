-- Lease up to ARGV[3] ready jobs for ARGV[4] seconds, after putting lapsed
-- leases and due delayed jobs back on the ready list. Each leased job's
-- attempt is incremented here. Returns one item per job (see below) and,
-- last: -2 if ready jobs are left, else the seconds until the next delayed
-- job or lease is due (-1: none).
reclaim(100)
promote(1000)
local out = {}
local ids, remaining = pop_ready(tonumber(ARGV[3]))
if #ids > 0 then
  local deadline = NOW + tonumber(ARGV[4])
  local last = redis.call('INCRBY', K_SEQ, #ids)
  local started_at = now_iso()
  for i, id in ipairs(ids) do
    local key = JOB_PREFIX .. id
    local token = tostring(last - #ids + i)
    local f = redis.call('HMGET', key, 'data', 'lx_attempt')
    local data, attempt, missing = f[1], (tonumber(f[2]) or 0) + 1, 0
    if not data then
      -- An id without a job (a foreign producer's mistake): keep the entry
      -- itself as the payload so that it is dead-lettered, not lost.
      data, missing = id, 1
      redis.call('HSET', key, 'data', id, 'origin', QUEUE_NAME)
    end
    redis.call('HSET', key, 'status', 'started', 'lx_attempt', attempt, 'lx_token', token,
      'started_at', started_at)
    redis.call('ZADD', K_LEASES, deadline, id)
    redis.call('ZADD', K_STARTED, '+inf', id .. ':' .. token)
    -- One reply item per job (each item costs the client a parse step):
    -- "<token> <attempt> <missing> <len(id)> <id><payload>".
    out[#out + 1] = token .. ' ' .. attempt .. ' ' .. missing .. ' ' .. #id .. ' ' .. id .. data
  end
end
if remaining > 0 then
  wake()  -- pass the turn on to another waiting consumer
  out[#out + 1] = '-2'
else
  out[#out + 1] = tostring(next_due())
end
return out
