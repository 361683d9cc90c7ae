-- Ready, delayed, running and failed counts, after lapsed leases and due
-- delayed jobs were moved to ready (so the figures are current).
while reclaim(1000) == 1000 do end
while promote(1000) == 1000 do end
redis.call('ZREMRANGEBYSCORE', K_FAILED, '-inf', NOW)
return {
  redis.call('LLEN', K_READY),
  redis.call('ZCARD', K_SCHEDULED),
  redis.call('ZCARD', K_LEASES),
  redis.call('ZCARD', K_FAILED),
}
