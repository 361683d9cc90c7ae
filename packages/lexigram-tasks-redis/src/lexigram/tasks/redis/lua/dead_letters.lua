-- The oldest ARGV[3] dead-lettered jobs: five items each (id, payload,
-- reason, failed_at, 1 if the payload was a valid job). Entries whose hash
-- expired, and failed jobs a dead letter queue took (lx_dlq), are skipped.
local out = {}
local ids = redis.call('ZRANGE', K_FAILED, 0, tonumber(ARGV[3]) - 1)
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', JOB_PREFIX .. id, 'data', 'lx_reason', 'lx_failed_at', 'lx_valid',
    'lx_dlq')
  if f[1] and not f[5] then
    out[#out + 1] = id
    out[#out + 1] = f[1]
    out[#out + 1] = f[2] or ''
    out[#out + 1] = f[3] or '0'
    out[#out + 1] = f[4] or '1'
  end
end
return out
