-- ARGV: ns, now, id. Returns the outcome: cancelled, requested, finished or not_found.
local id = ARGV[3]
local key = job_key(id)
local state = redis.call('HGET', key, 'state')
if not state then
  return 'not_found'
end
if FINISHED[state] then
  return 'finished'
end
if state == 'running' then
  redis.call('HSET', key, 'cancel', '1')
  return 'requested'
end
finish(id, key, 'cancelled', ARGV[2])
return 'cancelled'
