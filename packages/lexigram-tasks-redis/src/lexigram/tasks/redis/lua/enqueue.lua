-- Store jobs. ARGV[3] is the enqueue time in rq's format; from ARGV[4],
-- eight per job: id, payload, priority, run_at (0 = now), dedup key
-- ('' = none), attempt, created_at, description.
-- Returns, per job, the id of the job holding its dedup key (its own id
-- unless a pending job already holds the key). Enqueueing an id that is
-- still pending changes nothing, so a retried call cannot double a job.
local ids = {}
local enqueued_at = ARGV[3]
for i = 4, #ARGV, 8 do
  local id, payload, priority = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local run_at, dedup = tonumber(ARGV[i + 3]), ARGV[i + 4]
  local key = JOB_PREFIX .. id
  local holder = id
  if dedup ~= '' then
    local current = redis.call('HGET', K_DEDUP, dedup)
    if current and current ~= id
        and is_pending(redis.call('HGET', JOB_PREFIX .. current, 'status')) then
      holder = current
    end
  end
  if holder == id then
    local status = redis.call('HGET', key, 'status')
    if not is_pending(status) then
      if status then redis.call('DEL', key) end
      local state = run_at > NOW and 'scheduled' or 'queued'
      redis.call('HSET', key, 'data', payload, 'status', state, 'origin', QUEUE_NAME,
        'created_at', ARGV[i + 6], 'enqueued_at', enqueued_at, 'description', ARGV[i + 7],
        'lx_attempt', ARGV[i + 5], 'lx_priority', priority)
      if dedup ~= '' then
        redis.call('HSET', key, 'lx_dedup', dedup)
        redis.call('HSET', K_DEDUP, dedup, id)
      end
      if state == 'scheduled' then
        redis.call('ZADD', K_SCHEDULED, run_at, id)
      else
        push_ready(id, priority)
      end
    end
  end
  ids[#ids + 1] = holder
end
redis.call('SADD', K_QUEUES, K_READY)
wake()
return ids
