-- ARGV: ns, now, how many attempt records a job keeps, then per delivery: id,
-- state, error type, error message, run_at, attempt ('' for none), worker ('' for
-- none), attempt record (one JSON line, '' for none). A job cancelled while it
-- ran is not queued again.
local now, keep = ARGV[2], tonumber(ARGV[3])

for i = 4, #ARGV, 8 do
  local id = ARGV[i]
  local key = job_key(id)
  if redis.call('EXISTS', key) == 1 then
    if ARGV[i + 6] ~= '' then redis.call('HSET', key, 'worker_id', ARGV[i + 6]) end
    add_attempt(key, 'attempts', ARGV[i + 7], keep)
    local state = ARGV[i + 1]
    if ARGV[i + 2] ~= '' then
      redis.call('HSET', key, 'error_type', ARGV[i + 2], 'error_message', ARGV[i + 3])
    end
    if ARGV[i + 5] ~= '' then
      redis.call('HSET', key, 'attempt', ARGV[i + 5])
    end
    redis.call('HDEL', key, 'lease_until')
    if FINISHED[state] then
      finish(id, key, state, now)
    elseif redis.call('HGET', key, 'cancel') == '1' and state == 'retrying' then
      finish(id, key, 'cancelled', now)
    else
      move(id, key, state)
      if ARGV[i + 4] ~= '' then
        redis.call('HSET', key, 'run_at', ARGV[i + 4])
      else
        redis.call('HDEL', key, 'run_at')
      end
    end
  end
end
return 0
