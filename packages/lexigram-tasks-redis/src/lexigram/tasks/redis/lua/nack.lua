-- Settle a failed delivery. ARGV: 3 the lease ("<token> <id>"), 4 requeue
-- (1/0), 5 delay, 6 reason, 7 payload to store when requeued, 8 priority,
-- 9 attempt, 10 failure ttl, 11 whether the payload was a valid job (1/0).
-- Returns 1, or 0 when the token no longer holds the lease.
local id, token = split_lease(ARGV[3])
local key = JOB_PREFIX .. id
local f = redis.call('HMGET', key, 'lx_token', 'lx_dedup')
if f[1] ~= token then return 0 end
redis.call('ZREM', K_LEASES, id)
redis.call('ZREM', K_STARTED, id .. ':' .. token)
redis.call('HDEL', key, 'lx_token')
if ARGV[4] == '1' then
  local delay, priority = tonumber(ARGV[5]), tonumber(ARGV[8])
  redis.call('HSET', key, 'data', ARGV[7], 'lx_attempt', ARGV[9], 'lx_priority', priority)
  if delay > 0 then
    redis.call('HSET', key, 'status', 'scheduled')
    redis.call('ZADD', K_SCHEDULED, NOW + delay, id)
  else
    redis.call('HSET', key, 'status', 'queued')
    push_ready(id, priority)
  end
  wake()
else
  local ttl = tonumber(ARGV[10])
  release_dedup(f[2], id)
  redis.call('HSET', key, 'status', 'failed', 'ended_at', now_iso(), 'lx_reason', ARGV[6],
    'lx_failed_at', tostring(NOW), 'lx_valid', ARGV[11])
  redis.call('ZADD', K_FAILED, NOW + ttl, id)
  redis.call('EXPIRE', key, math.ceil(ttl))
end
return 1
