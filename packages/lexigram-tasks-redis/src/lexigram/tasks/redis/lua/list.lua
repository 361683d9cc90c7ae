-- A page of jobs. ARGV: 3 the page size, 4 how many entries to examine at
-- most (a bounded scan, whatever the filters reject), 5 the task name ('' any),
-- 6 the state wanted ('' any), 7 where to go on in the first source: an
-- index into the ready list, or "<score> <id>" of the last entry seen in a
-- sorted set ('' from the start), 8.. the sources to walk in order (ready,
-- scheduled, running, finished, failed, canceled).
-- Returns the source to go on with (1-based among ARGV[8..]; 0 when every
-- source is done) and the position in it, then per job its id, the number
-- of items of its hash, and the hash (HGETALL, without the attempt records).
local SOURCES = {ready = K_READY, scheduled = K_SCHEDULED, running = K_LEASES,
  finished = K_FINISHED, failed = K_FAILED, canceled = K_CANCELED}
local limit, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local task, wanted, position = ARGV[5], ARGV[6], ARGV[7]
local sources = #ARGV - 7

local function state_of(status, retrying, outcome)
  if status == 'queued' or status == 'scheduled' then
    return retrying == '1' and 'retrying' or status
  end
  if status == 'started' then return 'running' end
  if status == 'finished' then return 'succeeded' end
  if status == 'failed' then return outcome == 'dead' and 'dead' or 'failed' end
  if status == 'canceled' then return 'cancelled' end
  return status
end

-- Up to n entries after position: ids and each one's position.
local function entries(name, n)
  local key = SOURCES[name]
  local ids, positions = {}, {}
  if name == 'ready' then
    local start = tonumber(position) or 0
    ids = redis.call('LRANGE', key, start, start + n - 1)
    for i = 1, #ids do positions[i] = tostring(start + i) end
    return ids, positions
  end
  local flat
  if position == '' then
    flat = redis.call('ZRANGE', key, 0, n - 1, 'WITHSCORES')
  else
    local space = string.find(position, ' ', 1, true)
    local score, last = string.sub(position, 1, space - 1), string.sub(position, space + 1)
    local rank = redis.call('ZRANK', key, last)
    if rank and redis.call('ZSCORE', key, last) == score then
      flat = redis.call('ZRANGE', key, rank + 1, rank + n, 'WITHSCORES')
    else
      -- The last entry seen has left the set: go on after it in the set's order
      -- (score, then member), past the entries of its score sorted before it
      -- (many jobs leased together share a score). Bounded by the scan budget.
      flat = {}
      local offset, skipped = 0, 0
      while #flat < 2 * n and skipped < budget do
        local batch = redis.call('ZRANGEBYSCORE', key, score, '+inf', 'WITHSCORES',
          'LIMIT', offset, n)
        if #batch == 0 then break end
        for i = 1, #batch, 2 do
          if batch[i + 1] ~= score or batch[i] > last then
            if #flat < 2 * n then
              flat[#flat + 1] = batch[i]
              flat[#flat + 1] = batch[i + 1]
            end
          else
            skipped = skipped + 1
          end
        end
        offset = offset + #batch / 2
      end
    end
  end
  for i = 1, #flat, 2 do
    ids[#ids + 1] = flat[i]
    positions[#positions + 1] = flat[i + 1] .. ' ' .. flat[i]
  end
  return ids, positions
end

local out = {0, ''}
local found = 0
local source = 1
while source <= sources and found < limit and budget > 0 do
  local n = math.min(budget, math.max(limit - found, 100))
  local ids, positions = entries(ARGV[7 + source], n)
  local examined = 0
  for i, id in ipairs(ids) do
    examined = i
    budget = budget - 1
    position = positions[i]
    local key = JOB_PREFIX .. id
    local f = redis.call('HMGET', key, 'status', 'lx_retrying', 'lx_outcome', 'description')
    if f[1] and (task == '' or f[4] == task)
        and (wanted == '' or state_of(f[1], f[2], f[3]) == wanted) then
      local hash = redis.call('HGETALL', key)
      local kept = {}
      for i = 1, #hash, 2 do  -- a listing leaves the attempt records out (a job's page has them)
        if hash[i] ~= 'lx_attempts' then
          kept[#kept + 1] = hash[i]
          kept[#kept + 1] = hash[i + 1]
        end
      end
      out[#out + 1] = id
      out[#out + 1] = #kept
      for _, item in ipairs(kept) do out[#out + 1] = item end
      found = found + 1
    end
    if found >= limit or budget <= 0 then break end
  end
  if examined == #ids and #ids < n then
    source = source + 1
    position = ''
  end
end
if source <= sources then
  out[1], out[2] = source, position
end
return out
