-- Settle a failed delivery. ARGV: 3 the lease ("<token> <id>"), 4 requeue
-- (1/0), 5 delay, 6 reason, 7 payload to store when requeued, 8 priority,
-- 9 attempt, 10 failure ttl, 11 whether the payload was a valid job (1/0),
-- 12 the outcome the worker recorded ('' none, retrying, failed, dead),
-- 13 and 14 the error's type and message ('' none), 15 the worker (rq's
-- worker_name, '' none), 16 the attempt's record ('' none), 17 how many
-- attempts a job's history keeps.
-- Returns 1, or 0 when the token no longer holds the lease.
local id, token = split_lease(ARGV[3])
local key = JOB_PREFIX .. id
local f = redis.call('HMGET', key, 'lx_token', 'lx_dedup', 'lx_cancel', 'lx_ttl')
if f[1] ~= token then return 0 end
redis.call('ZREM', K_LEASES, id)
redis.call('ZREM', K_STARTED, id .. ':' .. token)
redis.call('HDEL', key, 'lx_token')
local outcome, error_type = ARGV[12], ARGV[13]
if error_type ~= '' then
  redis.call('HSET', key, 'lx_error_type', error_type, 'lx_error_message', ARGV[14])
end
if ARGV[15] ~= '' then redis.call('HSET', key, 'worker_name', ARGV[15]) end
add_attempt(key, 'lx_attempts', ARGV[16], tonumber(ARGV[17]))
if ARGV[4] == '1' and f[3] == '1' then
  -- Cancelled while it ran and handed back (a shutdown): it must not run again.
  finish_canceled(key, id, tonumber(f[4]) or 0, f[2])
elseif ARGV[4] == '1' then
  local delay, priority = tonumber(ARGV[5]), tonumber(ARGV[8])
  local retrying = outcome == 'retrying' and '1' or '0'
  if delay > 0 then
    redis.call('HSET', key, 'data', ARGV[7], 'lx_attempt', ARGV[9], 'lx_priority', priority,
      'lx_retrying', retrying, 'status', 'scheduled', 'lx_run_at', tostring(NOW + delay))
    redis.call('ZADD', K_SCHEDULED, NOW + delay, id)
  else
    redis.call('HSET', key, 'data', ARGV[7], 'lx_attempt', ARGV[9], 'lx_priority', priority,
      'lx_retrying', retrying, 'status', 'queued')
    push_ready(id, priority)
  end
  wake()
else
  local ttl = tonumber(ARGV[10])
  if outcome == '' then outcome = ARGV[11] == '1' and 'failed' or 'dead' end
  release_dedup(f[2], id)
  redis.call('HSET', key, 'status', 'failed', 'ended_at', now_iso(), 'lx_reason', ARGV[6],
    'lx_failed_at', tostring(NOW), 'lx_valid', ARGV[11], 'lx_outcome', outcome)
  redis.call('ZADD', K_FAILED, NOW + ttl, id)
  redis.call('EXPIRE', key, math.ceil(ttl))
end
return 1
