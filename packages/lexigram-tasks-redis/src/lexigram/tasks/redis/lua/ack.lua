-- Settle finished jobs. ARGV[3] is how long finished jobs stay visible in
-- rq's finished registry (0: delete at once); then one "<token> <id>" per
-- job. A job whose token is no longer its lease (the lease lapsed and the job
-- was handed to someone else) is left alone. Returns how many were acked.
local ttl = tonumber(ARGV[3])
local acked = 0
local ended_at = now_iso()
for i = 4, #ARGV do
  local id, token = split_lease(ARGV[i])
  local key = JOB_PREFIX .. id
  local f = redis.call('HMGET', key, 'lx_token', 'lx_dedup')
  if f[1] == token then
    redis.call('ZREM', K_LEASES, id)
    redis.call('ZREM', K_STARTED, id .. ':' .. token)
    release_dedup(f[2], id)
    if ttl > 0 then
      redis.call('HSET', key, 'status', 'finished', 'ended_at', ended_at, 'lx_token', '')
      redis.call('EXPIRE', key, ttl)
      redis.call('ZADD', K_FINISHED, NOW + ttl, id)
    else
      redis.call('DEL', key)
    end
    acked = acked + 1
  end
end
if ttl > 0 and acked > 0 then
  redis.call('ZREMRANGEBYSCORE', K_FINISHED, '-inf', NOW)
end
return acked
