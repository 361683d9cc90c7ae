-- Settle finished jobs. ARGV[3] is how long finished jobs stay visible in
-- rq's registries (0: delete at once). ARGV[4] is the worker that ran them
-- (rq's worker_name), ARGV[5] how many attempts a job's history keeps,
-- ARGV[6] and ARGV[7] the client's clock for ended_at (see now_iso).
-- ARGV[8] is how many jobs ended other than succeeded. ARGV[9] and ARGV[10],
-- when not empty, are the concurrency limiter's key prefix and the worker's
-- holder prefix with which its leases take slots (see lease.lua): the slots a
-- succeeded job's lease took are given back here. Then five values for each
-- job that did not succeed: the lease ("<token> <id>"), the outcome
-- (cancelled, failed or dead: a dead letter queue took it), the error's type
-- and message, and the attempt's record ('' none). Then one lease per
-- succeeded job. A job whose token is no longer its lease (the lease lapsed
-- and the job was handed to someone else) is left alone, but for the slots
-- this worker's lease took. Returns how many were acked.
local ttl = ARGV[3] + 0  -- arithmetic converts: half of what tonumber() costs
local worker, keep = ARGV[4], ARGV[5]
local others = ARGV[8] == '0' and 0 or ARGV[8] + 0
local SLOT_PREFIX = ARGV[9] ~= '' and ARGV[9] or nil
local HOLDER_PREFIX = ARGV[10]
local acked = 0
local ended_at = now_iso(ARGV[6], ARGV[7])
-- Numbers as text once (redis.call formats a number with sprintf each
-- time, tostring with '%.14g'); a whole-second expiry, as rq scores its
-- registries, is stored as an integer in a small sorted set (see
-- lease_deadline).
local expire_after = string.format('%d', math.ceil(ttl))
local expiry = string.format('%d', math.ceil(NOW + ttl))
-- The sorted sets are updated once for the whole batch.
local leases, started, finished = {}, {}, {}

-- The slots lx_slots names ("name\tlimit" pairs), as the lease took them for
-- this worker; removing a holder that is not there changes nothing.
local function give_back_slots(spec, id)
  local holder = HOLDER_PREFIX .. id
  local tab = string.find(spec, '\t', 1, true)
  if not string.find(spec, '\t', tab + 1, true) then  -- one limit: the usual case
    redis.call('ZREM', SLOT_PREFIX .. string.sub(spec, 1, tab - 1), holder)
    return
  end
  local is_name = true
  for field in string.gmatch(spec, '[^\t]+') do
    if is_name then redis.call('ZREM', SLOT_PREFIX .. field, holder) end
    is_name = not is_name
  end
end

local function settle(lease, outcome, error_type, error_message, record)
  local id, token = split_lease(lease)
  local key = JOB_PREFIX .. id
  local f
  if SLOT_PREFIX and not outcome then
    f = redis.call('HMGET', key, 'lx_token', 'lx_dedup', 'lx_slots')
    if f[3] then give_back_slots(f[3], id) end
  else
    f = redis.call('HMGET', key, 'lx_token', 'lx_dedup')
  end
  if f[1] ~= token then return end
  leases[#leases + 1] = id
  started[#started + 1] = id .. ':' .. token
  acked = acked + 1
  if outcome == 'cancelled' then
    finish_canceled(key, id, ttl, f[2])
    if ttl > 0 then
      redis.call('HSET', key, 'worker_name', worker)
      if error_type ~= '' then
        redis.call('HSET', key, 'lx_error_type', error_type, 'lx_error_message', error_message)
      end
    end
    return
  end
  release_dedup(f[2], id)
  if ttl <= 0 then
    redis.call('DEL', key)
    return
  end
  if outcome then
    -- A dead letter queue took it: rq's failed status, but in the finished
    -- registry, since this queue keeps no dead letter of it (counts().failed
    -- and dead_letters() are the backend's own).
    redis.call('HSET', key, 'status', 'failed', 'ended_at', ended_at, 'lx_token', '',
      'lx_outcome', outcome, 'lx_dlq', '1', 'lx_error_type', error_type,
      'lx_error_message', error_message, 'worker_name', worker)
    add_attempt(key, 'lx_attempts', record, keep + 0)
  else
    redis.call('HSET', key, 'status', 'finished', 'ended_at', ended_at, 'lx_token', '',
      'worker_name', worker)
  end
  redis.call('EXPIRE', key, expire_after)
  finished[#finished + 1] = expiry
  finished[#finished + 1] = id
end

for i = 11, 10 + others * 5, 5 do
  settle(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
end
for i = 11 + others * 5, #ARGV do
  settle(ARGV[i], nil, nil, nil, nil)
end
call_many('ZREM', K_LEASES, leases)
call_many('ZREM', K_STARTED, started)
call_many('ZADD', K_FINISHED, finished)
if ttl > 0 and acked > 0 then
  redis.call('ZREMRANGEBYSCORE', K_FINISHED, '-inf', NOW_TEXT)
end
return acked
