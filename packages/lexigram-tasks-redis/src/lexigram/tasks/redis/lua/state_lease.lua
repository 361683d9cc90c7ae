-- ARGV: ns, now, then per job: id, attempt, lease_until, fields (JSON, for a job with
-- no record). Returns the ids that must not run: tombstoned, or cancelled while
-- they ran (their worker died); those end cancelled.
local now = ARGV[2]
local dropped = {}
for i = 3, #ARGV, 4 do
  local id = ARGV[i]
  local key = job_key(id)
  if redis.call('EXISTS', key) == 0 then
    create(id, key, ARGV[i + 3])
  end
  local state, cancel = unpack(redis.call('HMGET', key, 'state', 'cancel'))
  if state == 'cancelled' then
    dropped[#dropped + 1] = id
  elseif cancel == '1' then
    finish(id, key, 'cancelled', now)
    dropped[#dropped + 1] = id
  else
    if FINISHED[state] then
      redis.call('ZREM', ns .. ':finished', id)
      redis.call('HDEL', key, 'finished_at')
    end
    move(id, key, 'running')
    redis.call('HSET', key, 'attempt', ARGV[i + 1], 'lease_until', ARGV[i + 2],
      'started_at', now)
  end
end
return dropped
