-- A workflow step failed for good. ARGV: namespace, workflow id, error (JSON).
-- A running workflow becomes failed. Returns {handler step, fresh} while the
-- error handler (step number `steps`, present when p:<steps> exists) is not
-- marked enqueued, else an empty list.
local key = ARGV[1] .. ':' .. ARGV[2]
local status = redis.call('HGET', key, 'status')
if not status then
  return {}
end
local fresh = 0
if status == 'running' then
  redis.call('HSET', key, 'status', 'failed', 'error', ARGV[3])
  status = 'failed'
  fresh = 1
end
local handler = redis.call('HGET', key, 'steps')
if status ~= 'failed' or redis.call('HEXISTS', key, 'p:' .. handler) == 0
    or redis.call('HEXISTS', key, 'e:' .. handler) == 1 then
  return {}
end
return {tonumber(handler), fresh}
