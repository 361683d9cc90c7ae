-- Ready, delayed, running and failed counts, after lapsed leases and due
-- delayed jobs were moved to ready (so the figures are current).
local moved = 0
repeat local n = reclaim(1000); moved = moved + n until n < 1000
repeat local n = promote(1000); moved = moved + n until n < 1000
if moved > 0 then wake() end
redis.call('ZREMRANGEBYSCORE', K_FAILED, '-inf', NOW)
return {
  redis.call('LLEN', K_READY),
  redis.call('ZCARD', K_SCHEDULED),
  redis.call('ZCARD', K_LEASES),
  redis.call('ZCARD', K_FAILED),
}
