-- Shared by the state_*.lua scripts of RedisJobStateStore (lexigram.tasks.redis.state_store).
-- ARGV[1] is the key namespace. A job's record is the hash NS:job:ID; each queue has
-- sorted sets of its jobs scored by enqueue sequence: NS:q:QUEUE:all, one per state
-- (NS:q:QUEUE:s:STATE) and one per task (NS:q:QUEUE:t:TASK). NS:finished scores
-- finished jobs by the time they finished, for the purge.
local ns = ARGV[1]
local FINISHED = {succeeded = true, failed = true, cancelled = true, dead = true}

local function job_key(id)
  return ns .. ':job:' .. id
end

local function state_key(queue, state)
  return ns .. ':q:' .. queue .. ':s:' .. state
end

-- Move a record from its state's set to STATE's (same score: its place in line).
local function move(id, key, state)
  local queue, old, seq = unpack(redis.call('HMGET', key, 'queue', 'state', 'seq'))
  if old ~= state then
    redis.call('ZREM', state_key(queue, old), id)
    redis.call('ZADD', state_key(queue, state), seq, id)
    redis.call('HSET', key, 'state', state)
  end
end

local function finish(id, key, state, now)
  move(id, key, state)
  redis.call('HSET', key, 'finished_at', now)
  redis.call('ZADD', ns .. ':finished', now, id)
end

-- Drop a record and its index entries.
local function remove(id, key)
  local queue, state, task = unpack(redis.call('HMGET', key, 'queue', 'state', 'task'))
  if queue then
    redis.call('ZREM', state_key(queue, state), id)
    redis.call('ZREM', ns .. ':q:' .. queue .. ':all', id)
    redis.call('ZREM', ns .. ':q:' .. queue .. ':t:' .. task, id)
  end
  redis.call('ZREM', ns .. ':finished', id)
  redis.call('DEL', key)
end

-- Create a record from FIELDS (a JSON object with queue, task, state and the details).
local function create(id, key, fields)
  local record = cjson.decode(fields)
  local seq = redis.call('INCR', ns .. ':seq')
  local flat = {'seq', seq}
  for name, value in pairs(record) do
    flat[#flat + 1] = name
    flat[#flat + 1] = value
  end
  redis.call('HSET', key, unpack(flat))
  local queue = record['queue']
  redis.call('ZADD', ns .. ':q:' .. queue .. ':all', seq, id)
  redis.call('ZADD', state_key(queue, record['state']), seq, id)
  redis.call('ZADD', ns .. ':q:' .. queue .. ':t:' .. record['task'], seq, id)
end
