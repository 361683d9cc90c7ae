-- Settle a failed delivery. ARGV: 3 id, 4 token, 5 requeue (1/0), 6 delay,
-- 7 reason, 8 payload to store when requeued, 9 priority, 10 attempt,
-- 11 failure ttl, 12 whether the payload was a valid job (1/0).
-- Returns 1, or 0 when the token no longer holds the lease.
local id, token = ARGV[3], ARGV[4]
local key = JOB_PREFIX .. id
local f = redis.call('HMGET', key, 'lx_token', 'lx_dedup')
if f[1] ~= token then return 0 end
redis.call('ZREM', K_LEASES, id)
redis.call('ZREM', K_STARTED, id .. ':' .. token)
redis.call('HDEL', key, 'lx_token')
if ARGV[5] == '1' then
  local delay, priority = tonumber(ARGV[6]), tonumber(ARGV[9])
  redis.call('HSET', key, 'data', ARGV[8], 'lx_attempt', ARGV[10], 'lx_priority', priority)
  if delay > 0 then
    redis.call('HSET', key, 'status', 'scheduled')
    redis.call('ZADD', K_SCHEDULED, NOW + delay, id)
  else
    redis.call('HSET', key, 'status', 'queued')
    push_ready(id, priority)
  end
  wake()
else
  local ttl = tonumber(ARGV[11])
  release_dedup(f[2], id)
  redis.call('HSET', key, 'status', 'failed', 'ended_at', now_iso(), 'lx_reason', ARGV[7],
    'lx_failed_at', tostring(NOW), 'lx_valid', ARGV[12])
  redis.call('ZADD', K_FAILED, NOW + ttl, id)
  redis.call('EXPIRE', key, math.ceil(ttl))
end
return 1
