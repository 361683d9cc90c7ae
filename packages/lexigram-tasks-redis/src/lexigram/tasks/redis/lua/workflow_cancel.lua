-- Cancel a workflow. ARGV: namespace, workflow id. A running workflow becomes
-- cancelled; returns its steps that are enqueued and not done.
local key = ARGV[1] .. ':' .. ARGV[2]
local status = redis.call('HGET', key, 'status')
if not status then
  return {}
end
if status == 'running' then
  redis.call('HSET', key, 'status', 'cancelled')
end
local out = {}
local steps = tonumber(redis.call('HGET', key, 'steps'))
for step = 0, steps - 1 do
  if redis.call('HEXISTS', key, 'e:' .. step) == 1 and redis.call('HEXISTS', key, 'r:' .. step) == 0 then
    out[#out + 1] = step
  end
end
return out
