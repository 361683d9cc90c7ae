-- Record finished workflow steps; claim the steps whose last input this was.
-- ARGV: namespace, then per step: workflow id, step, result (JSON), span,
-- number of dependents, the dependents. One hash per workflow (NS:ID):
-- status, steps, remaining, and per step p:N (inputs not done), r:N (result),
-- s:N (span), e:N (enqueued). Returns a flat list: workflow id, step, fresh (1/0).
local ns = ARGV[1]
local out = {}
local i = 2
while i <= #ARGV do
  local wf, step, result, span = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local n = tonumber(ARGV[i + 4])
  local key = ns .. ':' .. wf
  i = i + 5
  if redis.call('EXISTS', key) == 1 then
    local fresh = redis.call('HSETNX', key, 'r:' .. step, result) == 1
    redis.call('HSET', key, 'e:' .. step, '1')
    local status = redis.call('HGET', key, 'status')
    if fresh then
      if span ~= '' then
        redis.call('HSET', key, 's:' .. step, span)
      end
      if tonumber(step) < tonumber(redis.call('HGET', key, 'steps')) then
        local left = redis.call('HINCRBY', key, 'remaining', -1)
        if left == 0 and status == 'running' then
          status = 'succeeded'
          redis.call('HSET', key, 'status', status)
        end
      end
    end
    for j = 0, n - 1 do
      local dep = ARGV[i + j]
      local pending
      if fresh then
        pending = redis.call('HINCRBY', key, 'p:' .. dep, -1)
      else
        pending = tonumber(redis.call('HGET', key, 'p:' .. dep))
      end
      if status == 'running' and pending == 0 and redis.call('HEXISTS', key, 'e:' .. dep) == 0 then
        out[#out + 1] = wf
        out[#out + 1] = dep
        out[#out + 1] = fresh and 1 or 0
      end
    end
  end
  i = i + n
end
return out
