-- ARGV: ns, op, then per job: id and a value. op 'extend': the value is lease_until;
-- op 'progress': a JSON object of fraction, message and meta (merged).
local op = ARGV[2]
for i = 3, #ARGV, 2 do
  local key = job_key(ARGV[i])
  if redis.call('HGET', key, 'state') == 'running' then
    if op == 'extend' then
      redis.call('HSET', key, 'lease_until', ARGV[i + 1])
    else
      local report = cjson.decode(ARGV[i + 1])
      if report['fraction'] then
        redis.call('HSET', key, 'progress', report['fraction'])
      end
      if report['message'] then
        redis.call('HSET', key, 'progress_message', report['message'])
      end
      if report['meta'] then
        local meta = cjson.decode(redis.call('HGET', key, 'meta') or '{}')
        for name, value in pairs(cjson.decode(report['meta'])) do
          meta[name] = value
        end
        redis.call('HSET', key, 'meta', cjson.encode(meta))
      end
    end
  end
end
return 0
