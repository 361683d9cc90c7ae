-- Cancel job ARGV[3]. ARGV[4] is how long a cancelled job stays in rq's
-- CanceledJobRegistry (0: deleted at once), ARGV[5] the control channel.
-- A queued or delayed job is taken out of line and ends cancelled; a running
-- one is marked (lx_cancel, so a reclaim of its lapsed lease ends it
-- cancelled too) and its id published for its worker. Returns cancelled,
-- requested, finished or not_found.
local id, ttl = ARGV[3], tonumber(ARGV[4])
local key = JOB_PREFIX .. id
local f = redis.call('HMGET', key, 'status', 'origin', 'lx_priority', 'lx_dedup')
local status = f[1]
if not status or (f[2] and f[2] ~= QUEUE_NAME) then return 'not_found' end
if status == 'queued' then
  local priority = tonumber(f[3]) or 0
  if redis.call('LREM', K_READY, 1, id) > 0 and priority > 0 then
    if redis.call('HINCRBY', K_PRIO, priority, -1) <= 0 then
      redis.call('HDEL', K_PRIO, priority)
    end
  end
elseif status == 'scheduled' then
  redis.call('ZREM', K_SCHEDULED, id)
elseif status == 'started' then
  redis.call('HSET', key, 'lx_cancel', '1', 'lx_ttl', ARGV[4])
  redis.call('PUBLISH', ARGV[5], id)
  return 'requested'
else
  return 'finished'
end
finish_canceled(key, id, ttl, f[4])
return 'cancelled'
