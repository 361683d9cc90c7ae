-- Store jobs: ARGV[3] is the enqueue time in rq's format, stamped by the
-- client as rq stamps it (created_at and enqueued_at); ARGV from 4 are eight
-- values per job: id, payload (the JSON document, stored byte for byte), task,
-- priority, run_at (0: now), dedup key ('' for none), attempt, and the
-- concurrency slots a lease may take for it ('' for none; see lease.lua). The server's
-- clock is read (TIME) only for a job with a run_at, to tell a delayed job
-- from a due one. The client sends the fields it has already
-- validated, so the document is never parsed here: Lua's JSON parser neither
-- refuses a job Python accepted nor turns its big numbers into doubles.
-- Returns, per job, the id of the job holding its dedup key (its own id
-- unless a pending job already holds the key); for a single job that holds
-- it itself (the common case), 1, which the client reads for less than an
-- array. Enqueueing an id that is still pending changes nothing, so a
-- retried call cannot double a job.
local ids = {}
local enqueued_at = ARGV[3]
local now
for i = 4, #ARGV, 8 do
  local id, payload, task = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local priority, run_at = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local dedup, attempt = ARGV[i + 5], ARGV[i + 6]
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
      local state = 'queued'
      if run_at > 0 then
        if not now then
          local time = redis.call('TIME')
          now = tonumber(time[1]) + tonumber(time[2]) / 1000000
        end
        if run_at > now then state = 'scheduled' end
      end
      redis.call('HSET', key, 'data', payload, 'status', state, 'origin', QUEUE_NAME,
        'created_at', enqueued_at, 'enqueued_at', enqueued_at, 'description', task,
        'lx_attempt', attempt, 'lx_priority', priority)
      if ARGV[i + 7] ~= '' then redis.call('HSET', key, 'lx_slots', ARGV[i + 7]) end
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
if #ids == 1 and ids[1] == ARGV[4] then return 1 end
return ids
